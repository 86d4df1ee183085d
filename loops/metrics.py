"""The loops' domain metrics: issuance jobs and notification deliveries.

They live with the loops that record them, not in the core; they register into the core's
:data:`leasectl.metrics.REGISTRY`, so the daemon's ``/metrics`` serves them with the rest.
"""

from __future__ import annotations

from prometheus_client import Counter

from leasectl.metrics import REGISTRY

JOBS_CLAIMED = Counter(
    "leasectl_jobs_claimed_total", "Jobs claimed by job_processor", registry=REGISTRY
)
NOTIFICATIONS = Counter(
    "leasectl_notifications_total",
    "Notification deliveries by channel and outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)
