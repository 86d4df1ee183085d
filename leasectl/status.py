"""Lease status of a cluster, read from the database only (no daemon needs to answer).

The advisory locks are the truth: a lease is *held* when some session holds its lock in
``pg_locks`` and that holder renewed within ``lease_ttl``; *stale* when the lock is held but
the holder stopped renewing (hung, paused or partitioned: peers will evict it after
``lease_ttl + eviction_grace``) or the lease row does not describe the lock's holder; *free*
when nobody holds the lock. The tables (``leasectl_leases``, ``leasectl_replicas``) add the
epoch, history, and who the replicas are.

This module returns dataclasses; only the CLI renders them. It also holds the two operator
actions that go with the status: :func:`request_step_down_and_wait` and :func:`evict`.
"""

from __future__ import annotations

import functools
import getpass
import importlib
import math
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from leasectl import loop_status, placement, sql
from leasectl.config import redact_dsn
from leasectl.db import configured_dsn
from leasectl.db import connect as db_connect
from leasectl.embedded import EmbeddedPostgres, locate_data_dir
from leasectl.errors import DatabaseUnavailable, NotMigrated
from leasectl.keys import int4_hash, namespace_for
from leasectl.lease_manager import request_step_down
from leasectl.limits import read_fill
from leasectl.loop_control import Pause, read_pauses
from leasectl.schedule import zone_info
from leasectl.settings import Settings

Q = sql.load("status")
APP_PREFIX = "leasectl/"


@dataclass(frozen=True)
class LeaseStatus:
    """One lease as the database sees it."""

    name: str
    state: str  # held | stale | free
    holder: str | None = None  # replica id
    host: str | None = None
    pid: int | None = None  # the holder replica's OS pid
    backend_pid: int | None = None  # the lock session's server pid
    client_addr: str | None = None
    epoch: int | None = None  # current (held) or last (free) fencing epoch
    held_for_s: float | None = None
    renewed_age_s: float | None = None
    unheld_for_s: float | None = None  # free/stale: for how long (inf: never held)
    waiting: tuple[str, ...] = ()  # live replicas campaigning for it
    expected: bool = True  # configured as a leased loop (or recorded, if config unknown)
    reason: str = ""  # why stale / free
    placed_on: str | None = None  # the live replica spread placement would choose
    preferred: tuple[str, ...] = ()  # live candidates its preferred_holder names
    away_from_preferred: bool = False  # held, but not by a live preferred holder
    heir: str | None = None  # the live candidate that takes it next (placement order)

    @property
    def ok(self) -> bool:
        return self.state == "held"


@dataclass(frozen=True)
class ReplicaStatus:
    """One registered replica."""

    id: str
    host: str
    pid: int
    version: str
    started_at: datetime
    last_seen_age_s: float
    alive: bool  # lock session connected and heartbeating
    connected: bool  # lock session present
    stopped: bool  # stopped cleanly
    may_lead: bool
    leases: tuple[str, ...] = ()
    loops: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    campaigns_for: tuple[str, ...] = ()  # leases it is a placement candidate for
    preferred_for: tuple[str, ...] = ()
    wedged: tuple[str, ...] = ()
    live_for_s: float | None = None  # since its lock session registered
    standby: bool = False  # leases.standby: pooled, and no lock session now


@dataclass(frozen=True)
class LoopRun:
    """A loop's last run on one replica, as that replica recorded it after the tick."""

    replica: str
    tick_at: datetime | None  # the slot / fire time it ran for
    started_at: datetime | None
    seconds: float | None
    outcome: str | None  # ok | failed | lost | cancelled
    error: str | None  # this run's error (None when ok)
    last_error: str | None  # the latest error on that replica, kept across later ok runs
    last_error_at: datetime | None
    next_fire_at: datetime | None  # in the loop's zone
    wedged: bool  # that replica reports the loop's tick wedged
    live: bool  # that replica is live


@dataclass(frozen=True)
class TickRecord:
    """One slot of a leased loop in the tick ledger."""

    tick_at: datetime
    replica: str
    epoch: int
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    outcome: str  # running | ok | failed | lost | cancelled | missed
    attempts: int
    error: str | None
    triggered: bool = False  # an extra tick asked by `leasectl loop trigger`, not a slot


@dataclass(frozen=True)
class LoopHistory:
    """What ``leasectl status`` shows of one loop: its schedule, where and how it last ran
    (everywhere loops: per replica), its next fire time, and optionally the ledger's newest
    slots. The one read model of loop run history (the CLI and status pages render it)."""

    loop: str
    placement: str  # leased | everywhere
    schedule: str  # "every 60s", "cron '0 2 * * *' Europe/Berlin"
    tz: str
    runs: tuple[LoopRun, ...]  # newest first; leased: each replica that ran it
    recent: tuple[TickRecord, ...] = ()  # leased: newest slots first (when asked)

    @property
    def last(self) -> LoopRun | None:
        """Where and how the loop last ran (the newest run on any replica)."""
        return self.runs[0] if self.runs else None

    @property
    def next_fire_at(self) -> datetime | None:
        live = [r.next_fire_at for r in self.runs if r.live and r.next_fire_at is not None]
        if self.placement == "leased" or not live:
            return self.last.next_fire_at if self.last else None
        return min(live)

    @property
    def wedged_on(self) -> tuple[str, ...]:
        return tuple(r.replica for r in self.runs if r.wedged and r.live)


@dataclass(frozen=True)
class ClusterStatus:
    leases: list[LeaseStatus]
    replicas: list[ReplicaStatus]
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    expected_source: str = ""  # where the expected lease names came from
    rate_limits: list[dict[str, Any]] = field(default_factory=list)  # buckets' fill
    loops: list[LoopHistory] = field(default_factory=list)  # last runs, next fires
    pauses: list[Pause] = field(default_factory=list)  # every pause row (ended ones too)
    events: list[loop_status.Event] = field(default_factory=list)  # newest first
    database: str = ""  # the DSN read from, redacted

    def paused(self, loop: str) -> Pause | None:
        """The pause in force for ``loop`` (its own or a pause of every loop), if any."""
        return loop_status.pause_of(self.pauses, loop)

    def unheld(self, max_unheld: float = 0.0) -> list[LeaseStatus]:
        """Expected leases not held for longer than ``max_unheld`` seconds."""
        return [
            lease
            for lease in self.leases
            if lease.expected and not lease.ok and (lease.unheld_for_s or math.inf) > max_unheld
        ]

    def to_json(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return None if math.isinf(value) else round(value, 3)
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, tuple | list):
                return [clean(v) for v in value]
            return value

        def rows(items: Sequence[Any]) -> list[dict[str, Any]]:
            return [{k: clean_deep(v) for k, v in asdict(i).items()} for i in items]

        def clean_deep(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean_deep(v) for k, v in value.items()}
            return clean(value)

        return {
            "leases": rows(self.leases),
            "replicas": rows(self.replicas),
            "pauses": rows(self.pauses),
            "events": rows(self.events),
            "rate_limits": self.rate_limits,
            "loops": [loop_json(h) for h in self.loops],
            "database": self.database,
            "taken_at": self.taken_at.isoformat(),
        }


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isinf(value) else round(value, 3)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def loop_json(h: LoopHistory) -> dict[str, Any]:
    """One loop for ``--json``: the dataclass, plus where it last ran, its next fire (in its
    zone) and where it is wedged."""
    out: dict[str, Any] = _clean(asdict(h))
    last = h.last
    out["last"] = _clean(asdict(last)) if last else None
    out["next_fire_at"] = _clean(h.next_fire_at)
    out["wedged_on"] = list(h.wedged_on)
    return out


# -- connecting ---------------------------------------------------------------------------


def status_dsn(settings: Settings) -> str:
    """The configured DSN; with none, the embedded server's, but never start one to look."""
    dsn = configured_dsn(settings.database)
    if dsn:
        return dsn
    data_dir = locate_data_dir(settings.database.data_dir)
    info = EmbeddedPostgres(data_dir).info()
    if info is None:
        raise DatabaseUnavailable(
            f"no DSN configured and the embedded PostgreSQL in {data_dir} is not running: "
            "start it with `leasectl embedded start` (`leasectl run` and `leasectl migrate` "
            "start it too), or pass --dsn / set LEASECTL_DSN"
        )
    return info.dsn()


def connect(dsn: str, settings: Settings, purpose: str = "status") -> psycopg.Connection[Any]:
    """An autocommit connection for reading status; checks that the schema is there.

    :raises DatabaseUnavailable: cannot connect.
    :raises NotMigrated: the leasectl tables do not exist.
    """
    try:
        conn = db_connect(dsn, settings.database, f"leasectl-{purpose}", autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect: {str(exc).strip()}") from exc
    row = conn.execute(Q["migrated"]).fetchone()
    if not row or not row[0]:
        conn.close()
        raise NotMigrated(
            "database not migrated: the leasectl tables do not exist; run `leasectl migrate`"
        )
    return conn


def expected_leases(settings: Settings) -> tuple[list[str] | None, str]:
    """Names of the enabled leased loops per the configuration, and where they came from.

    The configuration decides, not the replicas that happen to be alive: with every replica
    down, the leases they should hold are still expected (and reported unheld). The loops
    section is built as loaded; ``leasectl status`` loads it with the loops' secrets left
    unresolved (which loops are enabled never depends on a secret). Without a loops section
    (``load_settings(loops=False)``) the package's default settings are used.

    None when the loops package cannot be loaded or a loop cannot be built: the caller then
    checks every lease recorded in the database instead (and says so).
    """
    package = settings.scheduler.loops_package
    try:
        registry = importlib.import_module(package + ".registry")
        loop_settings = settings.loops if settings.loops is not None else registry.SETTINGS_CLASS()
        specs = registry.build_loops(loop_settings)
    except Exception as exc:  # a broken or partial loops package must not break status
        return None, f"recorded leases only ({package} not loadable: {type(exc).__name__}: {exc})"
    names = [s.name for s in specs if s.placement == "leased"]
    only = settings.scheduler.only
    if only:
        names = [n for n in names if n in only]
    return names, f"configuration ({package}.registry)"


def declared_leases(
    conn: psycopg.Connection[Any], recent_s: float = 600.0
) -> tuple[list[str] | None, str]:
    """The leases the live and recent replicas declare (their Apps' leased loops, after
    ``--only``), and where that list came from: what ``leasectl status`` expects without
    ``--app``. The cluster knows what it runs; a local configuration may describe another App.

    None when no such replica declares any (a cluster down for longer than ``recent_s``, or
    replicas older than migration 0017): every lease recorded in the database is expected.
    """
    names = [r[0] for r in conn.execute(Q["declared_leases"], {"recent_s": recent_s})]
    if not names:
        return None, "recorded leases (no live or recent replica declares any)"
    return names, "the live and recent replicas"


def replica_sessions(dsn: str) -> list[tuple[str, list[str]]]:
    """``(database, replica ids)`` for every database of the server at ``dsn`` where a
    leasectl replica has a session (any database: the server is what would be stopped)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(Q["replica_sessions"], {}).fetchall()
    return [(db, sorted(ids)) for db, ids in rows]


# -- reading ----------------------------------------------------------------------------


def read_status(
    conn: psycopg.Connection[Any],
    *,
    namespace: str | int,
    lease_ttl: float,
    expected: Sequence[str] | None = None,
    all_replicas: bool = False,
    recent_s: float = 600.0,
    expected_source: str = "",
) -> ClusterStatus:
    """Read leases and replicas. ``expected``: the leases that should be held (None: every
    lease recorded in the database)."""
    ns = namespace_for(namespace)
    names = list(expected or [])
    lease_rows = conn.execute(
        Q["leases"], {"ns": ns, "names": names, "keys": [int4_hash(n) for n in names]}
    ).fetchall()
    replica_rows = conn.execute(
        Q["replicas"], {"all": all_replicas, "recent_s": recent_s}
    ).fetchall()
    replicas = [_replica(r, lease_ttl) for r in replica_rows]
    by_pid = {r[9]: r[0] for r in replica_rows if r[9] is not None}
    # Who campaigns for what, once (not per lease x replica x loop: 300 leases on 30 replicas
    # running 300 loops each would be 2.7 million membership tests per read).
    campaigning: dict[str, list[str]] = {}
    for r in replicas:
        if r.alive and r.may_lead:
            for loop in r.loops:
                campaigning.setdefault(loop, []).append(r.id)
    wanted = set(names)
    leases = [
        classify(
            row,
            lease_ttl,
            replicas,
            expected=expected is None or row[0] in wanted,
            campaigning=campaigning,
        )
        for row in lease_rows
    ]
    held_by: dict[str, list[str]] = {}
    for lease in leases:
        if lease.backend_pid in by_pid:
            held_by.setdefault(by_pid[lease.backend_pid], []).append(lease.name)
    replicas = [replace(r, leases=tuple(held_by.get(r.id, ()))) for r in replicas]
    return ClusterStatus(placed(leases, replicas), replicas, expected_source=expected_source)


def read_cluster(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    expected: Sequence[str] | None = None,
    expected_source: str = "",
    all_replicas: bool = False,
    dsn: str = "",
    events: int = 30,
) -> ClusterStatus:
    """The one read model of the cluster: leases, replicas, loops (run history, next
    fire, wedged), pauses, rate-limit fill, recent events. ``leasectl status`` and the status
    page render it; any replica reads the whole cluster."""
    # The events first: every acquisition the timeline shows is then in the leases too.
    recent = loop_status.recent_events(conn, events) if events else []
    status = read_status(
        conn,
        namespace=settings.leases.namespace,
        lease_ttl=settings.leases.lease_ttl,
        expected=expected,
        all_replicas=all_replicas,
        expected_source=expected_source,
    )
    return replace(
        status,
        rate_limits=read_fill(conn, settings.limits),
        loops=read_loop_history(conn, all_replicas=all_replicas),
        pauses=read_pauses(conn),
        events=recent,
        database=redact_dsn(dsn) if dsn else "",
    )


def read_loop_history(
    conn: psycopg.Connection[Any],
    *,
    loop: str | None = None,
    history: int = 0,
    all_replicas: bool = False,
    recent_s: float = 600.0,
) -> list[LoopHistory]:
    """Every loop's last runs and next fire time (``loop``: that one only), with the newest
    ``history`` slots of the ledger for leased loops. Next fire times are in each loop's zone.

    Loops appear once they have run somewhere (the rows are written after each tick).
    """
    try:
        rows = conn.execute(
            Q["loop_runs"], {"loop": loop, "all": all_replicas, "recent_s": recent_s}
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []  # a database migrated by an older leasectl: no run history yet
    grouped: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    out = []
    for name, group in grouped.items():
        first = group[0]
        tz = first[4]
        zone = zone_info(tz) if tz else UTC
        runs = tuple(
            LoopRun(
                replica=r[1],
                tick_at=r[5],
                started_at=r[6],
                seconds=float(r[7]) if r[7] is not None else None,
                outcome=r[8],
                error=r[9],
                last_error=r[10],
                last_error_at=r[11],
                next_fire_at=r[12].astimezone(zone) if r[12] is not None else None,
                wedged=bool(r[13]),
                live=bool(r[14]),
            )
            for r in group
        )
        recent: tuple[TickRecord, ...] = ()
        if history > 0 and first[2] == "leased":
            ticks = conn.execute(Q["loop_ticks"], {"loop": name, "limit": history}).fetchall()
            recent = tuple(
                TickRecord(
                    tick_at=t[0],
                    replica=t[1],
                    epoch=int(t[2]),
                    started_at=t[3],
                    finished_at=t[4],
                    seconds=float(t[5]) if t[5] is not None else None,
                    outcome=t[6],
                    attempts=int(t[7]),
                    error=t[8],
                    triggered=bool(t[9]),
                )
                for t in ticks
            )
        out.append(LoopHistory(name, first[2], first[3], tz, runs, recent))
    return out


def placed(leases: Sequence[LeaseStatus], replicas: Sequence[ReplicaStatus]) -> list[LeaseStatus]:
    """Pure: add, per lease, the replica spread placement would choose among the live
    candidates (the same computation every replica makes) and whether it is held away from
    its live preferred holder."""
    live = [r for r in replicas if r.alive and r.may_lead]
    plan = _plan(
        tuple(
            placement.Replica(
                r.id, frozenset(r.campaigns_for), frozenset(r.preferred_for), frozenset(r.wedged)
            )
            for r in live
        )
    )
    out = []
    for le in leases:
        preferred = tuple(
            r.id for r in live if le.name in r.preferred_for and le.name in r.campaigns_for
        )
        away = bool(preferred) and le.state == "held" and le.holder not in preferred
        heir = next((rid for rid in _ranking(plan, le.name) if rid != le.holder), None)
        out.append(
            replace(
                le,
                placed_on=plan.choose(le.name),
                preferred=preferred,
                away_from_preferred=away,
                heir=heir,
            )
        )
    return out


@functools.lru_cache(maxsize=4)
def _plan(view: tuple[placement.Replica, ...]) -> placement.Placement:
    """The placement of one view, computed once while the view stays the same (a page
    refreshing every few seconds; 300 leases x 30 replicas cost ~20 ms to place). The
    assignment and the ranking do not depend on how long a replica has been live, so the
    view leaves ``live_for`` at 0 and stays equal from one read to the next."""
    return placement.Placement(view)


@functools.lru_cache(maxsize=4096)
def _ranking(plan: placement.Placement, lease: str) -> tuple[str, ...]:
    """``plan``'s candidates for ``lease``, best first (cached with the plan: no re-sort)."""
    return tuple(r.id for r in plan.ranking(lease))


def _replica(row: Sequence[Any], lease_ttl: float) -> ReplicaStatus:
    rid, host, pid, version, started, age, may_lead, loops, stopped, lock_pid = row[:10]
    extra = (list(row[10:]) + [None] * 6)[:6]
    labels, campaigns_for, preferred_for, wedged, live_for, standby = extra
    connected = lock_pid is not None
    standby = bool(standby) and not connected
    return ReplicaStatus(
        id=rid,
        host=host,
        pid=pid,
        version=version,
        started_at=started,
        last_seen_age_s=float(age),
        alive=(connected or standby) and not stopped and float(age) <= lease_ttl,
        connected=connected,
        stopped=bool(stopped),
        may_lead=bool(may_lead),
        loops=tuple(loops or ()),
        labels=tuple(labels or ()),
        campaigns_for=tuple(campaigns_for or ()),
        preferred_for=tuple(preferred_for or ()),
        wedged=tuple(wedged or ()),
        live_for_s=float(live_for) if live_for is not None else None,
        standby=standby,
    )


def classify(
    row: Sequence[Any],
    lease_ttl: float,
    replicas: Iterable[ReplicaStatus],
    *,
    expected: bool,
    campaigning: dict[str, list[str]] | None = None,
) -> LeaseStatus:
    """Pure: one ``leases`` row → a :class:`LeaseStatus` (unit-tested without a database).

    ``campaigning``: loop name → live replicas that may lead it, when the caller has it
    (else computed from ``replicas``)."""
    (name, lock_pid, app, addr, holder, epoch, row_pid, held_for, renewed_age, idle) = row
    replicas = list(replicas)
    if lock_pid is None:
        holder_id = None
        state = "free"
        reason = "nobody holds the lock" if epoch is not None else "never acquired"
        unheld = float(idle) if idle is not None else math.inf
        held_for = None
    else:
        session_id = app[len(APP_PREFIX) :] if app and app.startswith(APP_PREFIX) else app
        if row_pid == lock_pid:
            holder_id = holder
            if renewed_age is not None and renewed_age > lease_ttl:
                state = "stale"
                reason = (
                    f"holder has not renewed for {renewed_age:.1f}s (lease_ttl {lease_ttl:g}s): "
                    "hung, paused or partitioned; peers evict it after lease_ttl + eviction_grace"
                )
                unheld = renewed_age - lease_ttl
            else:
                state, reason, unheld = "held", "", 0.0
        else:
            holder_id = session_id
            state = "stale"
            reason = (
                f"lock held by backend {lock_pid} ({app or 'unknown session'}) but the lease row "
                f"names backend {row_pid}: no fenced epoch for this holder"
            )
            unheld = float(renewed_age) if renewed_age is not None else math.inf
            held_for = None
    host = pid = None
    for r in replicas:
        if holder_id is not None and r.id == holder_id:
            host, pid = r.host, r.pid
    if campaigning is None:
        candidates = [r.id for r in replicas if r.alive and r.may_lead and name in r.loops]
    else:
        candidates = campaigning.get(name, [])
    waiting = tuple(rid for rid in candidates if rid != holder_id)
    return LeaseStatus(
        name=name,
        state=state,
        holder=holder_id,
        host=host,
        pid=pid,
        backend_pid=lock_pid,
        client_addr=addr,
        epoch=int(epoch) if epoch is not None else None,
        held_for_s=float(held_for) if held_for is not None and state != "free" else None,
        renewed_age_s=float(renewed_age) if renewed_age is not None else None,
        unheld_for_s=unheld,
        waiting=waiting,
        expected=expected,
        reason=reason,
    )


# -- operator actions -------------------------------------------------------------------


def operator_id() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def lease_holder(conn: psycopg.Connection[Any], lease: str, namespace: str | int) -> LeaseStatus:
    """The current status of one lease (free if unknown)."""
    rows = conn.execute(
        Q["leases"], {"ns": namespace_for(namespace), "names": [lease], "keys": [int4_hash(lease)]}
    ).fetchall()
    for row in rows:
        if row[0] == lease:
            return classify(row, math.inf, [], expected=True)
    return LeaseStatus(name=lease, state="free", reason="never acquired")


def request_step_down_and_wait(
    conn: psycopg.Connection[Any],
    *,
    namespace: str | int,
    lease: str | None = None,
    replica: str | None = None,
    cooldown: float | None = None,
    wait: float = 5.0,
    clock: Any = time.monotonic,
) -> dict[str, tuple[LeaseStatus, LeaseStatus]]:
    """Ask the holder(s) to step down (NOTIFY), then wait up to ``wait`` seconds for the
    lease(s) to change hands. Returns ``{lease: (before, after)}``."""
    status = read_status(
        conn, namespace=namespace, lease_ttl=math.inf, expected=[lease] if lease else []
    )
    if lease is not None:
        targets = [le for le in status.leases if le.name == lease]
    else:
        targets = [le for le in status.leases if le.holder == replica and le.state != "free"]
    if replica is not None:
        targets = [le for le in targets if le.holder == replica]
    request_step_down(conn, lease=lease, replica=replica, cooldown=cooldown)
    away = f"{cooldown:g}s" if cooldown is not None else "its leases.step_down_cooldown"
    if lease is not None:
        holders = sorted({le.holder for le in targets if le.holder}) or ["nobody"]
        reason = f"{', '.join(holders)} hands over {lease} and stays away {away}"
    else:
        reason = f"{replica} hands over every lease and stays away from all {away}"
    conn.execute(
        Q["record_event"],
        {
            "lease": lease or "*",
            "epoch": None,
            "replica": operator_id(),
            "event": "step_down_requested",
            "reason": reason,
        },
    )
    before = {le.name: le for le in targets}
    after = dict(before)
    deadline = clock() + wait
    while before and clock() < deadline:
        for name in before:
            after[name] = lease_holder(conn, name, namespace)
        if all(_moved(before[n], after[n]) for n in before):
            break
        time.sleep(0.05)
    return {n: (before[n], after[n]) for n in before}


_AWAY = re.compile(r"^(\S+) hands over .* stays away (?:from all )?(?:(\d+(?:\.\d+)?)s|its )")


def step_down_cooldowns(
    conn: psycopg.Connection[Any], lease: str, default_cooldown: float
) -> list[tuple[str, datetime]]:
    """Replicas still staying away from ``lease`` after a step-down, with when that ends.

    Read from the step-down requests recorded in the events table (the cooldown itself lives
    in each replica's memory); a request without ``--cooldown`` is assumed to use
    ``default_cooldown`` (this host's ``leases.step_down_cooldown``).
    """
    out: dict[str, datetime] = {}
    for at, text in conn.execute(Q["step_downs"], {"lease": lease}).fetchall():
        m = _AWAY.match(text or "")
        if m is None:
            continue
        seconds = float(m[2]) if m[2] else default_cooldown
        until = at + timedelta(seconds=seconds)
        if until > datetime.now(UTC):
            for rid in m[1].split(","):
                out[rid.strip()] = max(until, out.get(rid.strip(), until))
    return sorted(out.items(), key=lambda kv: kv[1])


def _moved(before: LeaseStatus, after: LeaseStatus) -> bool:
    return after.state == "held" and (after.holder != before.holder or after.epoch != before.epoch)


def evict(
    conn: psycopg.Connection[Any], lease: str, *, namespace: str | int, backend_pid: int
) -> bool:
    """Terminate ``backend_pid``'s lock session if it still holds ``lease``; record it."""
    row = conn.execute(
        Q["evict"], {"ns": namespace_for(namespace), "key": int4_hash(lease), "pid": backend_pid}
    ).fetchone()
    done = bool(row and row[0])
    if done:
        conn.execute(
            Q["record_event"],
            {
                "lease": lease,
                "epoch": None,
                "replica": operator_id(),
                "event": "evicted",
                "reason": f"leasectl evict: terminated backend {backend_pid}",
            },
        )
    return done
