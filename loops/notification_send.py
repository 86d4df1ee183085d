"""notification_send: deliver pending notifications (email, webhook), exactly one replica.

A tick claims up to ``batch`` pending rows under the lease epoch, delivers each with its id
as idempotency key, and marks it sent, or failed with its first retry 1 minute out. Leased
because delivery is an external side effect: certctl ran this on every replica and sent N
copies (its dispatch and mark were not even in one transaction). The lease makes the normal
case exactly-once; the epoch fence plus the idempotency key cover the failover window.
"""

from __future__ import annotations

from leasectl.certs._common import schedule_of
from leasectl.certs.notify.dispatch import Channels, Dispatcher, tick_timeout
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when disabled. Compiles the templates now: a broken one fails start.

    :raises ConfigError: invalid channel settings or a template that does not compile.
    """
    ns = settings.notifications
    if not ns.send.enabled:
        return None
    dispatcher = Dispatcher(Channels.from_settings(ns), ns, "send")
    return LoopSpec(
        name="notification_send",
        **schedule_of(ns.send),
        placement="leased",
        run=dispatcher.run,
        timeout=tick_timeout(ns, "send"),
        run_on_start=True,
        description="deliver pending notifications (email, webhook)",
    )
