"""Notices that keep riders and staff coming back: surveys, reports, greetings, offers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core.notices.base import Notice, Stamp


class BroadcastNotice(Notice):
    """One text per language; the rider reads theirs, or the Chinese one."""

    kind = "broadcast"
    zh_CN: str
    en: str | None = None

    def text(self, lang: str) -> str:
        return (self.en if lang == "en" else None) or self.zh_CN


class OffpeakReminderNotice(Notice):
    kind = "offpeak_reminder"
    percent: int  # the night price as a share of the day price


class RedPacketNotice(Notice):
    kind = "red_packet"
    festival: str  # slug, e.g. mid_autumn
    campaign: str = ""
    amount_fen: int
    balance_fen: int


class NpsPromptNotice(Notice):
    kind = "nps_prompt"
    charge_id: int
    port: str = ""


class SiteNpsLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    site_id: str
    name: str
    nps: float | None
    responses: int


class MonthlyReportNotice(Notice):
    """`core.engagement.reports.MonthlyReport` as sent to staff."""

    kind = "monthly_report"
    month: str  # YYYY-MM
    tz: str
    nps: float | None
    responses: int
    promoters: int
    passives: int
    detractors: int
    by_site: list[SiteNpsLine] = []
    reasons: list[tuple[str, int]] = []  # most given first
    charges: int = 0
    tickets: int = 0
    tickets_per_1000_charges: float | None = None
    faults: int = 0
    faults_per_1000_charges: float | None = None
    repairs_resolved: int = 0
    mttr_hours: float | None = None
    promise_breaches: int = 0


class AnnualReadyNotice(Notice):
    kind = "annual_ready"
    year: int


class GroupBuyFilledNotice(Notice):
    """A group-buy deal closed for this member: the terms and the balance after."""

    kind = "groupbuy_filled"
    deal_id: int
    code: str
    size: int
    topup_fen: int
    price_fen: int
    percent_off: int
    balance_fen: int


class GroupBuyExpiredNotice(GroupBuyFilledNotice):
    """The same terms; the deal did not fill and the price went back."""

    kind = "groupbuy_expired"


class VoucherIssuedNotice(Notice):
    """A partner voucher issued to the rider."""

    kind = "voucher_issued"
    voucher_id: int
    code: str
    merchant: str
    value_fen: int
    title: dict[str, str]  # by language
    expires_at: Stamp
    redeemed_at: Stamp | None = None

    def title_in(self, lang: str) -> str:
        return self.title.get(lang) or next(iter(self.title.values()), self.merchant)


class VoucherRedeemedNotice(VoucherIssuedNotice):
    kind = "voucher_redeemed"
