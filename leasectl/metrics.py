"""Prometheus metrics of the core (leases, loop ticks), defined once in one registry.

Loops register their own domain metrics into :data:`REGISTRY` (see ``loops/metrics.py``), so
``/metrics`` serves them all while the core knows nothing about jobs or notifications.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LEASE_HELD = Gauge(
    "leasectl_lease_held", "1 while this replica holds the lease", ["lease"], registry=REGISTRY
)
LEASE_EPOCH = Gauge(
    "leasectl_lease_epoch", "Fencing epoch of the lease as last seen", ["lease"], registry=REGISTRY
)
LEASE_TRANSITIONS = Counter(
    "leasectl_lease_transitions_total",
    "Lease transitions by reason",
    ["lease", "reason"],
    registry=REGISTRY,
)
LEASE_ACQUIRE_SECONDS = Histogram(
    "leasectl_lease_acquire_seconds",
    "Time from campaign start to a fenced acquisition",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
HEARTBEAT_SECONDS = Histogram(
    "leasectl_heartbeat_seconds",
    "Heartbeat round-trip time",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
SELF_FENCE = Counter(
    "leasectl_self_fence_total",
    "Leases this replica stopped believing in, by reason",
    ["reason"],
    registry=REGISTRY,
)
LOOP_TICKS = Counter(
    "leasectl_loop_ticks_total", "Loop ticks by outcome", ["loop", "outcome"], registry=REGISTRY
)
LOOP_TICK_SECONDS = Histogram(
    "leasectl_loop_tick_seconds", "Duration of loop ticks", ["loop"], registry=REGISTRY
)
LOOP_LAST_SUCCESS = Gauge(
    "leasectl_loop_last_success_timestamp",
    "Unix time of the loop's last successful tick",
    ["loop"],
    registry=REGISTRY,
)

LOOP_WEDGED = Gauge(
    "leasectl_loop_wedged",
    "1 while a tick of this loop has outlived timeout + scheduler.wedge_grace",
    ["loop"],
    registry=REGISTRY,
)


def reason_class(reason: str) -> str:
    """Collapse free-text reasons into a small label set (bounded cardinality)."""
    head = reason.split(":", 1)[0].strip()
    for known in (
        "campaign",
        "shutdown",
        "step_down",
        "ttl_expired",
        "lock_missing_or_superseded",
        "connection_lost",
        "server_in_recovery",
        "fatal",
    ):
        if head.startswith(known):
            return known
    return "other"
