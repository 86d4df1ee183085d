"""The fault kinds, as primitives the drill applies to one replica (or the server).

=============  ==========================================================================
``graceful``   SIGTERM: the daemon drains its ticks and releases with NOTIFY.
``kill``       SIGKILL: the process is gone; the server frees its locks at once.
``stop``       SIGSTOP for longer than the lease TTL, then SIGCONT: a hung holder. Peers
               evict it (``pg_terminate_backend``) once its renewal is older than
               ``lease_ttl + eviction_grace``; after SIGCONT it must find its lease lost
               and its guarded writes refused.
``terminate``  ``pg_terminate_backend`` of the holder's lock connection only.
``partition``  the holder's veth goes down for longer than ``D_srv``, then up.
``db-restart`` the (embedded) server restarts; every lease must come back.
``db-failover`` the primary crashes (``pg_ctl stop -m immediate``) and its streaming standby
               is promoted (``pg_ctl promote``); every lease must come back on the new primary
               at a higher epoch than any the old primary issued (see ``standby.py``).
``pooler-restart`` the PgBouncer (transaction mode) in front of the work pools restarts;
               locks go direct, so no lease may flap, and work must resume.
``backend-kill-storm`` random work-pool backends are terminated several times a second for a
               while; lock connections are spared: no lease may flap, nothing may be lost.
``wedge``     one replica's tick of the drill-only loop blocks for ever, deaf to cancellation;
               the real watchdog must give the lease up (see ``wedge.py``).
``join``      a replica joins, then leaves: placement hands leases over gracefully
               (see ``join.py``).
=============  ==========================================================================
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import psycopg

from leasectl import sql
from leasectl.tools.drill.cluster import Replica

Q = sql.load("drill", package="leasectl.tools.drill")

KINDS = (
    "graceful",
    "kill",
    "stop",
    "terminate",
    "partition",
    "db-restart",
    "db-failover",
    "pooler-restart",
    "backend-kill-storm",
    "wedge",
    "join",
)


class FaultError(RuntimeError):
    """A fault could not be injected (e.g. the lock connection was not found)."""


def parse_kinds(text: str) -> list[str]:
    """``"graceful,kill"`` -> ``["graceful", "kill"]``; unknown kinds raise ValueError."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if not kinds:
        raise ValueError("no fault kinds given")
    return list(dict.fromkeys(kinds))


def schedule(kinds: list[str], rounds: int) -> list[str]:
    """Interleave the kinds: ``rounds`` rounds of each, round-robin (a, b, a, b, ...)."""
    return [k for _ in range(rounds) for k in kinds]


def sigterm(rep: Replica) -> float:
    rep.stopped_by_drill = "graceful"
    t = time.time()
    rep.signal(signal.SIGTERM)
    return t


def sigkill(rep: Replica) -> float:
    rep.stopped_by_drill = "kill"
    t = time.time()
    rep.signal(signal.SIGKILL)
    return t


def sigstop(rep: Replica) -> float:
    t = time.time()
    rep.signal(signal.SIGSTOP)
    return t


def sigcont(rep: Replica) -> float:
    t = time.time()
    rep.signal(signal.SIGCONT)
    return t


def lock_backend_pid(conn: psycopg.Connection[Any], replica_id: str) -> int | None:
    """The backend pid of ``replica_id``'s lock connection (``leasectl/<id>``), if connected."""
    row = conn.execute(Q["lock_backend"], {"application_name": f"leasectl/{replica_id}"}).fetchone()
    return int(row[0]) if row else None


def terminate_lock_connection(dsn: str, rep: Replica) -> tuple[float, int]:
    """``pg_terminate_backend`` of the replica's lock connection; returns (instant, pid)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        pid = lock_backend_pid(conn, rep.replica_id)
        if pid is None:
            raise FaultError(
                f"no lock connection with application_name leasectl/{rep.replica_id} "
                "holding advisory locks in pg_stat_activity"
            )
        t = time.time()
        conn.execute(Q["terminate"], {"pid": pid})
    return t, pid


def partition(rep: Replica) -> float:
    if rep.netns is None:
        raise FaultError(f"replica {rep.replica_id} does not run in a network namespace")
    t = time.time()
    rep.netns.partition()
    return t


def heal(rep: Replica) -> float:
    assert rep.netns is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
    t = time.time()
    rep.netns.heal()
    return t


def kill_storm(
    dsn: str, run_prefix: str, *, duration: float, per_s: float, rng: random.Random
) -> tuple[int, float]:
    """Terminate a random work backend of this drill's replicas ``per_s`` times a second.

    Returns (backends terminated, instant the storm ended). Lock connections are named
    ``leasectl/<id>``, work connections ``leasectl-work/<id>``: only the latter are hit.
    """
    killed = 0
    pattern = {"pattern": f"leasectl-work/{run_prefix}%"}
    end = time.monotonic() + duration
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        while time.monotonic() < end:
            pids = [int(r[0]) for r in conn.execute(Q["work_backends"], pattern).fetchall()]
            if pids:
                conn.execute(Q["terminate"], {"pid": rng.choice(pids)})
                killed += 1
            time.sleep(1.0 / per_s)
    return killed, time.time()
