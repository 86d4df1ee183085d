"""``leasectl timing`` (also ``leasectl config explain-timing``): the timing bounds, explained.

From the effective settings and what the server reports for a lock connection (the lease
manager's own start-up path: :meth:`LockSession.connect` sets the TCP settings and reads them
back with ``SHOW``, :class:`~leasectl.locks.TcpBound` turns them into D_srv), print D_srv,
the self-fence and eviction bounds, the worst-case takeover for each kind of fault, and
whether the safety inequality holds. The formulas are docs/safety.md's ("Timing, explained");
they are computed in :func:`explain` so the page, the command and the tests share one
definition.

Exit codes: 0 the inequality holds; 1 it does not (``run`` would refuse to start); 2 cannot
read the configuration or reach the server (``--offline`` computes from the configured TCP
settings instead of asking the server).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from leasectl import status as st
from leasectl.app import App
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from
from leasectl.cli.run import add_app_argument, app_on, includes_shipped_loops, named_app
from leasectl.db import is_unix_socket, resolve_lock_dsn
from leasectl.locks import LockSession, TcpBound
from leasectl.settings import Settings
from leasectl.timing import safety_rules


@dataclass(frozen=True)
class Fault:
    """The worst-case takeover after one kind of fault: seconds and how they add up."""

    kind: str
    takeover_s: float | None  # None: depends on something outside leasectl (e.g. a restart)
    formula: str
    note: str = ""


@dataclass(frozen=True)
class Timing:
    """Everything ``leasectl timing`` prints (``--json`` prints this as an object)."""

    tcp_source: str  # "server" (read back with SHOW) or "configured" (--offline)
    tcp: dict[str, Any]
    d_srv_s: float | None  # None: Unix socket, no partition possible
    campaign_max_s: float
    self_fence_s: float
    eviction_s: float
    safety_budget_s: float  # lease_ttl + safety_margin
    inequality_holds: bool
    checks: list[str]  # each rule with its numbers, "ok" or "VIOLATED"
    faults: list[Fault]
    wedged: dict[str, float] = field(default_factory=dict)  # leased loop -> takeover bound
    via_pooler: bool = False


def add_timing_parser(sub: Any) -> None:
    p = sub.add_parser(
        "timing",
        help="explain the timing bounds (D_srv, self-fence, eviction, takeover per fault)",
        description=(
            "Print D_srv (from the TCP settings the server reports for a lock connection), the "
            "self-fence and eviction bounds, the worst-case takeover for each fault kind, and "
            "whether the safety inequality holds. Exit 0: it holds; 1: it does not; 2: cannot "
            "read the configuration or reach the server."
        ),
    )
    add_timing_arguments(p)


def add_timing_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``timing`` (shared with ``config explain-timing``)."""
    add_common(p)
    add_app_argument(p)
    add_argument(p, "--json", env="TIMING_JSON", action="store_true", help="print JSON")
    add_argument(
        p,
        "--offline",
        env="TIMING_OFFLINE",
        action="store_true",
        help="do not connect: use the configured TCP settings (the server may not honour them)",
    )
    p.set_defaults(handler=cmd_timing)


def cmd_timing(args: argparse.Namespace) -> int:
    named = named_app(args)
    # The loops: section only for an App that includes the shipped loops (an --app without
    # them never imports them).
    settings = settings_from(args, loops=False)
    if includes_shipped_loops(named, settings):
        settings = settings_from(args, unset_secrets="loops")
    app = app_on(args, settings, named)
    if args.offline:
        db = settings.database
        dsn = db.lock_dsn or db.dsn
        tcp = TcpBound(
            db.tcp_keepalives_idle,
            db.tcp_keepalives_interval,
            db.tcp_keepalives_count,
            db.tcp_user_timeout_ms,
            bool(dsn) and is_unix_socket(dsn),
        )
        timing = explain(settings, tcp, source="configured", timeouts=_leased_timeouts(app))
    else:
        tcp, via_pooler = read_tcp(settings)
        timing = explain(
            settings,
            tcp,
            source="server",
            via_pooler=via_pooler,
            timeouts=_leased_timeouts(app),
        )
    if args.json:
        print(json.dumps(asdict(timing), indent=2))
    else:
        print(render(timing))
    return exit_codes.OK if timing.inequality_holds else exit_codes.CHECK_FAILED


def read_tcp(settings: Settings) -> tuple[TcpBound, bool]:
    """The TCP settings in force on a lock connection, exactly as the lease manager reads
    them at start (same connect, same SET + SHOW); the connection is closed again."""
    dsn = resolve_lock_dsn(settings.database, st.status_dsn(settings))  # never starts a server
    session = LockSession.connect(
        dsn,
        settings.database,
        "leasectl-timing",
        namespace=settings.leases.namespace,
        check_pooler=False,
    )
    try:
        assert session.tcp is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        return session.tcp, session.via_pooler
    finally:
        session.close()


def _leased_timeouts(app: App) -> dict[str, float]:
    """Each leased loop's tick timeout (for the wedged-tick bound) of the App the command
    describes (``--app``'s, or the shipped loops), after ``scheduler.only``; empty when its
    loops cannot be built here."""
    try:
        specs = app.loops()
    except Exception:  # the bound is then shown as a formula only
        return {}
    only = app.settings.scheduler.only
    return {
        s.name: float(s.timeout)
        for s in specs
        if s.placement == "leased" and (not only or s.name in only)
    }


def explain(
    settings: Settings,
    tcp: TcpBound,
    *,
    source: str = "server",
    via_pooler: bool = False,
    timeouts: dict[str, float] | None = None,
) -> Timing:
    """The bounds of docs/safety.md for these settings and this TCP bound (pure)."""
    ls = settings.leases
    d_srv = tcp.d_srv
    a_max = ls.acquire_interval * (1 + ls.acquire_jitter)
    evict = ls.lease_ttl + ls.eviction_grace
    budget = ls.lease_ttl + ls.safety_margin
    checks: list[str] = []
    ok = True

    for r in safety_rules(ls, d_srv):  # the same rules the lease manager's start check uses
        if r.holds is None:
            checks.append(r.text)
        else:
            ok = ok and r.holds
            checks.append(f"{r.text}: {'ok' if r.holds else 'VIOLATED'}")
    backoff = ls.reconnect_max_backoff * 1.2
    hang = evict + 2 * a_max
    crash = Fault(
        "crash",
        a_max,
        f"acquire_interval x (1 + acquire_jitter) = {a_max:g}s",
        "the server frees the locks as the socket closes; a peer takes them at its next campaign",
    )
    if ls.standby == "pooled":
        h_max = ls.heir_interval * (1 + ls.acquire_jitter)
        poll = ls.heartbeat_interval * (1 + ls.acquire_jitter)
        crash = Fault(
            "crash",
            h_max,
            f"heir_interval x (1 + acquire_jitter) = {h_max:g}s (a lease whose heir died too: "
            f"+ the next standby poll, {poll:g}s, + one connect)",
            "leases.standby: pooled: the lease's heir keeps a lock session and finds the lock "
            "free at its next campaign, or sooner: the first standby poll that sees the crash "
            "tells it (about heartbeat_interval / number of standbys)",
        )
    faults = [
        crash,
        Fault(
            "graceful",
            settings.scheduler.shutdown_grace,
            f"scheduler.shutdown_grace = {settings.scheduler.shutdown_grace:g}s (drain), then "
            "one round trip",
            "SIGTERM: running ticks drain, then release + NOTIFY wakes the peers at once; "
            "with no tick running it is one round trip",
        ),
        Fault(
            "hang",
            hang,
            f"lease_ttl + eviction_grace + 2 x campaign = {ls.lease_ttl:g} + "
            f"{ls.eviction_grace:g} + 2 x {a_max:g} = {hang:g}s",
            "a stopped holder is evicted once its renewal is older than lease_ttl + "
            "eviction_grace (database clock), and the lock taken at the next campaign",
        ),
        _partition(d_srv, hang, a_max),
        Fault(
            "wedged tick",
            None,
            f"loop timeout + scheduler.wedge_grace ({settings.scheduler.wedge_grace:g}s) + "
            f"crash takeover ({a_max:g}s)",
            "the replica releases a wedged loop's lease; per leased loop below",
        ),
        Fault(
            "database restart",
            None,
            f"restart time + reconnect backoff (<= 1.2 x reconnect_max_backoff = {backoff:g}s)"
            f" + campaign ({a_max:g}s)",
            "every holder self-fences on its first failed heartbeat; after the server is back, "
            "replicas reconnect and campaign; epochs are bumped",
        ),
    ]
    wedged = {
        name: timeout + settings.scheduler.wedge_grace + a_max
        for name, timeout in sorted((timeouts or {}).items())
    }
    return Timing(
        tcp_source=source,
        tcp={
            "tcp_keepalives_idle": tcp.idle,
            "tcp_keepalives_interval": tcp.interval,
            "tcp_keepalives_count": tcp.count,
            "tcp_user_timeout_ms": tcp.user_timeout_ms,
            "unix_socket": tcp.unix_socket,
        },
        d_srv_s=d_srv,
        campaign_max_s=a_max,
        self_fence_s=ls.lease_ttl,
        eviction_s=evict,
        safety_budget_s=budget,
        inequality_holds=ok,
        checks=checks,
        faults=faults,
        wedged=wedged,
        via_pooler=via_pooler,
    )


def _partition(d_srv: float | None, hang: float, a_max: float) -> Fault:
    """A partitioned holder is dropped by the server after D_srv, or evicted like a hung one
    (the server terminates its backend, whatever the network), whichever comes first."""
    if d_srv is None:
        return Fault("partition", None, "n/a", "Unix socket: no partition possible")
    dropped = d_srv + a_max
    best = min(dropped, hang)
    return Fault(
        "partition",
        best,
        f"min(D_srv + campaign = {dropped:g}s, hang bound = {hang:g}s)",
        "the server drops the silent connection after D_srv, or peers evict it as hung",
    )


def render(t: Timing) -> str:
    tcp = t.tcp
    read = "read back from the server with SHOW" if t.tcp_source == "server" else "configured"
    lines = [
        f"lock connection TCP settings ({read}): keepalives idle {tcp['tcp_keepalives_idle']}s,"
        f" interval {tcp['tcp_keepalives_interval']}s, count {tcp['tcp_keepalives_count']}, "
        f"tcp_user_timeout {tcp['tcp_user_timeout_ms']}ms"
        + (", Unix socket" if tcp["unix_socket"] else ""),
        "D_srv (earliest the server may drop a silent holder): "
        + (f"{t.d_srv_s:g}s" if t.d_srv_s is not None else "none (Unix socket)"),
        f"self-fence bound: a holder stops believing {t.self_fence_s:g}s (lease_ttl) after the "
        "start of its last successful heartbeat",
        f"eviction bound: a holder not renewed for {t.eviction_s:g}s (lease_ttl + "
        "eviction_grace, database clock) is evicted",
        f"campaign interval: at most {t.campaign_max_s:g}s (acquire_interval x (1 + jitter))",
    ]
    if t.via_pooler:
        lines.append(
            "WARNING: the lock connection goes through a pooler: these TCP settings bound the "
            "pooler's link to PostgreSQL, not the replica's"
        )
    lines += ["", "worst-case takeover by fault kind:"]
    for f in t.faults:
        took = f"{f.takeover_s:g}s" if f.takeover_s is not None else "see formula"
        lines.append(f"  {f.kind:<17} {took:<12} {f.formula}")
    for name, bound in t.wedged.items():
        lines.append(f"    wedged {name}: {bound:g}s")
    lines += ["", "safety inequality:"]
    lines += [f"  {c}" for c in t.checks]
    lines.append(
        "holds: yes" if t.inequality_holds else "holds: NO - `leasectl run` refuses to start"
    )
    return "\n".join(lines)
