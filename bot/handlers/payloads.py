"""Every button's data, typed: one class per prefix (bot.handlers.routing.Payload).

These formats are already on riders' screens: a change here breaks buttons sent yesterday, so
a new format gets a new prefix. Ids are int (ASCII digits within int4), the rest is text;
the last field takes the rest of the data, colons included, unless the class says
`split="right"`.
"""

from __future__ import annotations

from bot.handlers.routing import Payload

# --- ports and charges ---------------------------------------------------------------------


class ShowPort(Payload, prefix="port"):
    code: str


class ShowPile(Payload, prefix="pile"):
    pile: str


class Nearby(Payload, prefix="near"):
    pass


class Alternatives(Payload, prefix="alt"):
    pile: str


class StartCharge(Payload, prefix="start"):
    code: str


class StopCharge(Payload, prefix="stop"):
    charge_id: int


class Status(Payload, prefix="status"):
    pass


class History(Payload, prefix="history"):
    pass


class OpenLocker(Payload, prefix="locker"):
    charge_id: int


# --- wallet and plans ----------------------------------------------------------------------


class Wallet(Payload, prefix="wallet"):
    pass


class PayDue(Payload, prefix="pay"):
    pass


class TopUp(Payload, prefix="topup"):
    """A sandbox top-up: the card's server-issued nonce pays once."""

    amount: int
    nonce: str


class TopUpVia(Payload, prefix="topupvia"):
    """A provider's top-up: `telegram` (the Telegram skin sends the invoice) or `wechatpay`."""

    provider: str
    amount: int


class AutoTopUp(Payload, prefix="autotopup"):
    choice: str  # an amount in fen, or "off"


class BuyPlan(Payload, prefix="plan"):
    name: str
    nonce: str


class FamilyAction(Payload, prefix="family"):
    """`family` (the card), `family:inv:{limit}`, `family:rm[ok]:{member}`, `family:leave[ok]`."""

    action: str = ""
    ref: str = ""


class Dispute(Payload, prefix="dispute"):
    ref: str = ""  # a charge id; anything else questions the latest bill


# --- menu and account ----------------------------------------------------------------------


class Menu(Payload, prefix="menu"):
    pass


class Help(Payload, prefix="help"):
    pass


class Language(Payload, prefix="lang"):
    lang: str = ""  # empty: the language menu


class LinkAnswer(Payload, prefix="lk"):
    verdict: str  # ok | no
    attempt_id: int


class WebLogout(Payload, prefix="weblogout"):
    pass


class MyYear(Payload, prefix="myyear"):
    pass


class ToolKit(Payload, prefix="tool"):
    action: str  # borrow | return
    site_id: str = ""


# --- support, feedback, surveys ------------------------------------------------------------


class ReportMenu(Payload, prefix="rep"):
    target: str  # a port code, or c{charge id}


class ReportProblem(Payload, prefix="rp", split="right"):
    target: str
    problem: str


class SkipPhoto(Payload, prefix="rskip"):
    ticket_id: int


class Emergency(Payload, prefix="sos"):
    # Text, not an id: an emergency is answered whatever the button carries.
    ref: str = ""


class AskPerson(Payload, prefix="ask"):
    pass


class EndTicket(Payload, prefix="tend"):
    ticket_id: int


class TicketAction(Payload, prefix="tk"):
    action: str  # list | take | reply | close | faq | ver
    ref: str = ""


class RateAnswer(Payload, prefix="trate"):
    ticket_id: int
    stars: int


class ReviewStart(Payload, prefix="rv"):
    charge_id: int


class ReviewStars(Payload, prefix="rvs"):
    charge_id: int
    stars: int


class ReviewTag(Payload, prefix="rvt"):
    review_id: int
    tag: str


class ReviewDone(Payload, prefix="rvd"):
    review_id: int


class DecideIdea(Payload, prefix="sg"):
    verdict: str  # yes | no
    suggestion_id: int


class FaqEntry(Payload, prefix="faq"):
    key: str = ""  # empty: the most asked questions


class Vote(Payload, prefix="vote"):
    site_id: str


class Nps(Payload, prefix="nps"):
    """`nps:{charge}:{score}`, `nps:{charge}:off`, `nps:{charge}:r:{reason}`."""

    charge_id: int
    answer: str


class GroupBuyAction(Payload, prefix="gb"):
    action: str  # join | pay
    deal_id: int


# --- staff ---------------------------------------------------------------------------------


class WorkOrderAction(Payload, prefix="wo"):
    action: str  # list | show | ack | arr | res
    ref: str = ""


class RateRepair(Payload, prefix="rate"):
    order_id: int
    stars: int
