"""notification_retry: re-attempt failed notifications whose backoff has passed.

A tick claims ``failed`` rows with ``next_retry_at <= now()`` under the lease epoch and
delivers them again with the same idempotency key; a failure pushes the next try out (1, 2,
4, 8 minutes) and the fifth failed attempt makes the row ``dead`` with ``last_error``. Leased
for the same reason as notification_send: a retry is an external side effect.
"""

from __future__ import annotations

from leasectl.certs._common import schedule_of
from leasectl.certs.notify.dispatch import Channels, Dispatcher, tick_timeout
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when disabled.

    :raises ConfigError: invalid channel settings or a template that does not compile.
    """
    ns = settings.notifications
    if not ns.retry.enabled:
        return None
    dispatcher = Dispatcher(Channels.from_settings(ns), ns, "retry")
    return LoopSpec(
        name="notification_retry",
        **schedule_of(ns.retry),
        placement="leased",
        run=dispatcher.run,
        timeout=tick_timeout(ns, "retry"),
        run_on_start=True,
        description="retry failed notifications with backoff; dead-letter after max_attempts",
    )
