"""leases.standby: pooled with 20 real replica processes whose work DSN is a real PgBouncer in
transaction mode: direct lock sessions stay O(leases), and killing holders, killing heirs and
restarting the pooler always ends with every lease held again, epochs increasing, no overlap.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl.tools.drill import pooler
from tests.conftest import wait_until
from tests.integration.conftest import lock_holders
from tests.replica_proc import ReplicaProcess

LEASES = [f"pooled-{i}" for i in range(5)]
REPLICAS = 20

LOCK_SESSIONS = """
SELECT substr(application_name, 10) FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'leasectl/%'
  AND application_name NOT LIKE '%/watch'
"""


@pytest.fixture
def bouncer(fence_dsn: str) -> Iterator[pooler.PgBouncer]:
    """The drill's PgBouncer (transaction mode, restartable on its port) in front of the db."""
    if pooler.binary() is None:
        pytest.skip("pgbouncer binary not found (apt-get install pgbouncer; .ci/run does)")
    workdir = Path(tempfile.mkdtemp(prefix="leasectl-pooled-"))
    workdir.chmod(0o755)  # pgbouncer runs as the embedded server's user when we are root
    pgb = pooler.PgBouncer(workdir, fence_dsn, ["127.0.0.1"])
    pgb.start()
    try:
        yield pgb
    finally:
        pgb.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def holders(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    return {
        n: [(app or "?").removeprefix("leasectl/") for app in apps]
        for n, apps in lock_holders(conn, LEASES).items()
    }


def all_held(conn: psycopg.Connection[Any], alive: dict[str, ReplicaProcess]) -> dict[str, str]:
    """{lease: holder} once every lease has exactly one holder among the live replicas, and
    that holder has reported acquiring the lease at its current epoch (so a kill lands on a
    holder that has finished taking over, never between its lock and its epoch bump)."""
    now = holders(conn)
    if not all(len(h) == 1 and h[0] in alive for h in now.values()):
        return {}
    epochs = dict(
        conn.execute(
            "SELECT name, epoch FROM leasectl_leases WHERE name = ANY(%s)", (LEASES,)
        ).fetchall()
    )
    for name, (holder,) in now.items():
        if not any(
            e["ev"] == "acquired" and e.get("lease") == name and e.get("epoch") == epochs.get(name)
            for e in list(alive[holder].events)
        ):
            return {}
    return {n: h[0] for n, h in now.items()}


def lock_sessions(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute(LOCK_SESSIONS)}


def test_twenty_pooled_replicas_fail_over_through_kills_and_a_pooler_restart(
    fence_dsn: str, bouncer: pooler.PgBouncer
) -> None:
    procs: dict[str, ReplicaProcess] = {}
    killed_at: dict[str, float] = {}
    try:
        for i in range(REPLICAS):
            rid = f"pool-{i:02d}"
            procs[rid] = ReplicaProcess(
                fence_dsn, rid, LEASES, standby="pooled", work_dsn=bouncer.dsn()
            )
        for p in procs.values():
            p.ready(60)
        alive = dict(procs)
        with psycopg.connect(fence_dsn, autocommit=True) as conn:
            wait_until(lambda: all_held(conn, alive), 30, 0.05, "every lease held")
            # Settled: the lock sessions are the holders plus one heir per lease, not 20.
            wait_until(
                lambda: len(lock_sessions(conn)) <= 2 * len(LEASES),
                30,
                0.1,
                "standbys closed their lock sessions",
            )
            assert not [
                r
                for (r,) in conn.execute(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE application_name LIKE 'leasectl/%/watch'"
                )
            ], "pooled mode keeps no watch sessions"

            def kill(rid: str) -> None:
                killed_at[rid] = time.monotonic()
                procs[rid].signal(signal.SIGKILL)
                del alive[rid]

            def take_over(what: str) -> dict[str, str]:
                t0 = time.monotonic()
                got: dict[str, str] = wait_until(lambda: all_held(conn, alive), 15, 0.02, what)
                took = time.monotonic() - t0
                print(f"{what}: {took:.3f}s; lock sessions {len(lock_sessions(conn))}")
                return got

            # Kill holders: each time every lease is held again, by a live replica.
            for _ in range(3):
                held = take_over("every lease held before a kill")
                victim = held[LEASES[0]]
                kill(victim)
                after = take_over(f"{LEASES[0]} taken over after killing {victim}")
                assert after[LEASES[0]] != victim
            # Kill heirs (direct but holding nothing), then a holder whose heir just died.
            held = take_over("every lease held before killing heirs")
            wait_until(
                lambda: lock_sessions(conn) - set(held.values()), 15, 0.1, "a heir is direct"
            )
            heirs = sorted((lock_sessions(conn) - set(all_held(conn, alive).values())) & set(alive))
            for rid in heirs[:2]:
                kill(rid)
            victim = take_over("held after killing heirs")[LEASES[1]]
            kill(victim)
            assert (
                take_over(f"{LEASES[1]} taken over after its heir and holder died")[LEASES[1]]
                != victim
            )
            # Restart the pooler: every standby loses its connection and comes back; a holder
            # killed afterwards is still replaced.
            _, serving = bouncer.restart()
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM leasectl_replicas WHERE id = ANY(%s)"
                        " AND last_seen > to_timestamp(%s)",
                        (list(alive), serving),
                    ).fetchone()[0]  # type: ignore[index]
                    == len(alive)
                ),
                30,
                0.2,
                "every live replica stamped its row again after the pooler restart",
            )
            victim = take_over("held after the pooler restart")[LEASES[2]]
            kill(victim)
            assert (
                take_over(f"{LEASES[2]} taken over after the pooler restart")[LEASES[2]] != victim
            )
            assert len(lock_sessions(conn)) <= 2 * len(LEASES) + 2

            rows = conn.execute(
                "SELECT lease, epoch, replica, event FROM leasectl_lease_events"
                " WHERE lease = ANY(%s) AND event IN ('acquired', 'released') ORDER BY id",
                (LEASES,),
            ).fetchall()
        assert_no_overlap(rows, procs, killed_at)
    finally:
        for p in procs.values():
            p.close()


def assert_no_overlap(
    rows: list[tuple[Any, ...]], procs: dict[str, ReplicaProcess], killed_at: dict[str, float]
) -> None:
    """Per lease, in the database's order: epochs strictly increase, and each new holder
    acquired only after the previous one released it (recorded before the unlock), or died
    (SIGKILLed) or dropped it (its own ``lost`` event) before the new holder's acquisition."""

    def mono(rid: str, kind: str, lease: str, epoch: int) -> float | None:
        for ev in list(procs[rid].events):
            if ev["ev"] == kind and ev.get("lease") == lease and ev.get("epoch") == epoch:
                return float(ev["mono"])
        return None

    for lease in LEASES:
        prev: tuple[int, str, bool] | None = None
        for name, epoch, replica, event in rows:
            if name != lease:
                continue
            if event == "released":
                if prev is not None and prev[0] == epoch:
                    prev = (epoch, replica, True)
                continue
            if prev is not None:
                prev_epoch, prev_holder, released = prev
                assert epoch > prev_epoch, f"{lease}: epoch {epoch} after {prev_epoch}"
                if not released:
                    start = mono(replica, "acquired", lease, epoch)
                    ended = killed_at.get(prev_holder) or mono(
                        prev_holder, "lost", lease, prev_epoch
                    )
                    assert start is not None and ended is not None and ended <= start, (
                        f"{lease}: {replica} acquired epoch {epoch} at {start} while "
                        f"{prev_holder} (epoch {prev_epoch}) had not released, died or lost "
                        f"it (ended {ended})"
                    )
            prev = (epoch, replica, False)
