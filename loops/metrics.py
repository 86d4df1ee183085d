"""The loops' domain metrics: issuance jobs and notification deliveries.

They live with the loops that record them, not in the core; they register into the core's
:data:`leasectl.metrics.REGISTRY`, so the daemon's ``/metrics`` serves them with the rest.
Every labelled series starts at 0 (at import, and again at each
:func:`leasectl.metrics.declare` through its hook) so ``increase()`` sees the first failure.
"""

from __future__ import annotations

from prometheus_client import Counter

from leasectl.certs.renewal_check import CHANNELS
from leasectl.metrics import REGISTRY, on_declare

#: Outcomes of one delivery attempt by the notification loops.
DELIVERY_OUTCOMES: tuple[str, ...] = ("sent", "failed", "dead", "superseded")
#: Outcomes of the digest (sent by email only).
DIGEST_OUTCOMES: tuple[str, ...] = ("digest_sent", "digest_failed")

JOBS_CLAIMED = Counter(
    "leasectl_jobs_claimed_total", "Jobs claimed by job_processor", registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "leasectl_notifications_total",
    "Notification deliveries by channel and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)


@on_declare
def declare() -> None:
    """Create every (channel, outcome) series at 0; existing ones keep their value."""
    for channel in CHANNELS:
        for outcome in DELIVERY_OUTCOMES:
            NOTIFICATIONS.labels(channel, outcome)
    for outcome in DIGEST_OUTCOMES:
        NOTIFICATIONS.labels("Email", outcome)


declare()
