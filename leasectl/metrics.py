"""Prometheus metrics of the core (leases, loop ticks), defined once in one registry.

Loops register their own domain metrics into :data:`REGISTRY` (see ``loops/metrics.py``), so
``/metrics`` serves them all while the core knows nothing about jobs or notifications.

Every series an alert reads exists from the replica's start (:func:`declare`): a gauge that
appears only once something happened cannot say "nothing happened" (``leasectl_lease_held``
vanishing with its holder made "lease unheld" unalertable), and a counter whose first sample
is already 1 hides that first event from ``increase()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from leasectl.loop import LoopSpec

REGISTRY = CollectorRegistry(auto_describe=True)

#: Outcomes of ``leasectl_loop_ticks_total`` (the scheduler's tick results).
TICK_OUTCOMES: tuple[str, ...] = ("ok", "failed", "lost", "cancelled", "skipped", "missed")

#: Reason classes a free-text lease reason collapses to (:func:`reason_class`), in match order.
REASON_CLASSES: tuple[str, ...] = (
    "campaign",
    "shutdown",
    "step_down",
    "ttl_expired",
    "lock_missing_or_superseded",
    "connection_lost",
    "server_in_recovery",
    "fatal",
    "wedged",
    "rebalance",
    "released",  # a ``with app.lease(...)`` block was left
)

#: ``reason`` values of ``leasectl_lease_transitions_total`` declared at 0 for every lease.
TRANSITION_REASONS: tuple[str, ...] = (
    "acquired",
    "evicted_holder",
    *(r for r in REASON_CLASSES if r != "campaign"),
    "other",
)

#: ``reason`` values of ``leasectl_self_fence_total``: losses without a release.
SELF_FENCE_REASONS: tuple[str, ...] = (
    "ttl_expired",
    "lock_missing_or_superseded",
    "connection_lost",
    "server_in_recovery",
    "fatal",
    "other",
)

LEASE_HELD = Gauge(
    "leasectl_lease_held",
    "1 while this replica holds the lease; 0 for every other lease it campaigns for",
    ["lease"],
    registry=REGISTRY,
)
LEASE_WANTED = Gauge(
    "leasectl_lease_wanted",
    "1 for every lease this replica campaigns for (may_lead and not --no-leased)",
    ["lease"],
    registry=REGISTRY,
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
_LAST_SUCCESS = "leasectl_loop_last_success_timestamp_seconds"
LOOP_LAST_SUCCESS = Gauge(
    _LAST_SUCCESS,
    "Unix time of the loop's last successful tick here (the replica's start before the first)",
    ["loop"],
    registry=REGISTRY,
)
LOOP_INTERVAL = Gauge(
    "leasectl_loop_interval_seconds",
    "The loop's configured interval (for staleness alerts: no success in 3 intervals)",
    ["loop", "placement"],
    registry=REGISTRY,
)
LOOP_WEDGED = Gauge(
    "leasectl_loop_wedged",
    "1 while a tick of this loop has outlived timeout + scheduler.wedge_grace",
    ["loop"],
    registry=REGISTRY,
)
LOOP_PAUSED_SINCE = Gauge(
    "leasectl_loop_paused_since_timestamp_seconds",
    "Unix time since which the loop is paused cluster-wide (leasectl loop pause); 0: not paused",
    ["loop"],
    registry=REGISTRY,
)
LOOP_TRIGGERED = Counter(
    "leasectl_loop_triggered_ticks_total",
    "Extra ticks this replica ran because an operator triggered the loop (leasectl loop trigger)",
    ["loop"],
    registry=REGISTRY,
)

_declare_hooks: list[Callable[[], None]] = []


def on_declare(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` at every :func:`declare`: loops (which the core never imports) initialise
    their own labelled counters this way. Returns ``hook`` so it can be a decorator."""
    if hook not in _declare_hooks:
        _declare_hooks.append(hook)
    return hook


def declare(specs: Sequence[LoopSpec], *, may_lead: bool, now: float | None = None) -> None:
    """Create every series this replica will ever export, before anything happens.

    Called once by the daemon at start, before campaigning. Series that already exist keep
    their value (several daemons may share this process's registry in tests), so a lease
    another daemon in this process holds is not reset to 0.

    :param specs: the loops this replica runs.
    :param may_lead: whether it campaigns for the leased ones; a replica that does not
        exports no ``lease`` series (it must not count as a candidate in ``lease unheld``).
    :param now: Unix time standing in for "last success" before a loop's first success
        (default: now), so "no success for 3 intervals" also fires for a loop that never
        succeeds on a replica started long enough ago.
    """
    started = time.time() if now is None else now
    for spec in specs:
        LOOP_INTERVAL.labels(spec.name, spec.placement).set(spec.interval)
        for outcome in TICK_OUTCOMES:
            LOOP_TICKS.labels(spec.name, outcome)
        LOOP_TICK_SECONDS.labels(spec.name)
        LOOP_WEDGED.labels(spec.name)
        LOOP_PAUSED_SINCE.labels(spec.name)
        LOOP_TRIGGERED.labels(spec.name)
        if spec.placement == "leased" and not may_lead:
            continue  # never runs here: no last success to stand in for, no lease to want
        if REGISTRY.get_sample_value(_LAST_SUCCESS, {"loop": spec.name}) is None:
            LOOP_LAST_SUCCESS.labels(spec.name).set(started)
        if spec.placement == "leased":
            declare_leases([spec.name])
    for reason in SELF_FENCE_REASONS:
        SELF_FENCE.labels(reason)
    for hook in list(_declare_hooks):
        hook()


def declare_leases(names: Iterable[str], *, wanted: bool = True) -> None:
    """The series of leases this replica campaigns for (leased loops, ``app.lease``,
    ``@app.leader``): wanted 1, held and every transition reason at 0.

    ``wanted=False``: a ``with app.lease()`` block's lease, wanted only while a block waits
    or runs (:mod:`leasectl.leader` sets the gauge then), so "lease unheld" stays quiet."""
    for name in names:
        LEASE_WANTED.labels(name).set(1 if wanted else 0)
        LEASE_HELD.labels(name)
        for reason in TRANSITION_REASONS:
            LEASE_TRANSITIONS.labels(name, reason)


def reason_class(reason: str) -> str:
    """Collapse free-text reasons into a small label set (bounded cardinality)."""
    head = reason.split(":", 1)[0].strip()
    for known in REASON_CLASSES:
        if head.startswith(known):
            return known
    return "other"


# -- rate limits (leasectl.limits) --------------------------------------------------------------

RATE_LIMIT_ALLOWED = Counter(
    "leasectl_rate_limit_allowed_total",
    "Events the cluster-wide rate limit allowed, by limit name",
    ["limit"],
    registry=REGISTRY,
)
RATE_LIMIT_UNCONFIGURED = Counter(
    "leasectl_rate_limit_unconfigured_total",
    "Events asked of a rate limit name that has no limits.<name> entry (not limited: a typo?)",
    ["limit"],
    registry=REGISTRY,
)
RATE_LIMIT_THROTTLED = Counter(
    "leasectl_rate_limit_throttled_total",
    "Acquires the cluster-wide rate limit refused (the caller deferred or waited), by limit",
    ["limit"],
    registry=REGISTRY,
)
