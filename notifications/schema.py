"""The notifications' own tables (web-chat inbox, WeChat token/inbound/options store).

Core's registry (`core.schema`) imports nothing above core; migrations and tests import both.
"""

from notifications import webchat_inbox, wechat_store  # noqa: F401
