"""The scheduler on a real PostgreSQL with two in-process replicas.

Each replica has its own LeaseManager (its own lock connection) and its own pool, exactly as
two daemons would; only the process boundary is missing (the drills cover that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from leasectl.lease_manager import LeaseManager
from leasectl.leases import FENCE_SQL
from leasectl.loop import LoopSpec, TickContext
from leasectl.scheduler import Scheduler
from leasectl.settings import CoreSettings, LeaseSettings, SchedulerSettings
from tests.conftest import one, wait_until

FAST = CoreSettings(leases=LeaseSettings(acquire_interval=0.1, heartbeat_interval=0.5))

RECORD = (
    "INSERT INTO tick_log (loop, tick_at, epoch, replica) "
    "SELECT %(loop)s, %(tick_at)s, %(lease_epoch)s, %(replica)s WHERE " + FENCE_SQL
)


def record_tick(ctx: TickContext) -> None:
    assert ctx.lease is not None
    ctx.check()
    with ctx.pool.connection() as conn:
        conn.execute(
            RECORD,
            {
                "loop": ctx.loop,
                "tick_at": ctx.tick_at,
                "replica": ctx.replica_id,
                **ctx.lease.fence_params(),
            },
        )


class Replica:
    def __init__(self, name: str, dsn: str, specs: list[LoopSpec]) -> None:
        self.pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        leased = [s.name for s in specs if s.placement == "leased"]
        self.manager = LeaseManager(name, leased, FAST, dsn=dsn)
        self.manager.start()
        self.scheduler = Scheduler(
            specs,
            replica_id=name,
            pool=self.pool,
            config=None,
            settings=SchedulerSettings(error_backoff_initial=0.05, error_backoff_max=0.2),
            lease_manager=self.manager,
        )
        self.scheduler.start()

    def stop(self, grace: float = 5.0) -> bool:
        drained = self.scheduler.stop(grace)
        self.manager.stop()
        self.pool.close()
        return drained


@pytest.fixture
def tick_log(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE tick_log (loop text, tick_at timestamptz, epoch bigint, replica text)"
    )


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        try:
            r.stop(1.0)
        except Exception:
            pass


def test_leased_loop_runs_once_per_slot_across_handover(
    dsn: str, conn: psycopg.Connection[Any], tick_log: None, replicas: list[Replica]
) -> None:
    spec = LoopSpec(name="digest", interval=0.2, placement="leased", run=record_tick, jitter=0.0)
    a = Replica("A", dsn, [spec])
    replicas.append(a)
    a.manager.wait_for("digest", 5)
    b = Replica("B", dsn, [spec])
    replicas.append(b)
    wait_until(
        lambda: one(conn.execute("SELECT count(*) FROM tick_log WHERE replica='A'"))[0] >= 3,
        what="A ran three ticks",
    )
    a.stop()
    wait_until(
        lambda: one(conn.execute("SELECT count(*) FROM tick_log WHERE replica='B'"))[0] >= 3,
        what="B took over and ran three ticks",
    )
    dupes = conn.execute(
        "SELECT tick_at, count(*) FROM tick_log GROUP BY tick_at HAVING count(*) > 1"
    ).fetchall()
    assert dupes == []
    a_max = one(conn.execute("SELECT max(epoch) FROM tick_log WHERE replica='A'"))[0]
    b_min = one(conn.execute("SELECT min(epoch) FROM tick_log WHERE replica='B'"))[0]
    assert b_min > a_max
    ledger = one(
        conn.execute(
            "SELECT count(*), count(DISTINCT tick_at) FROM leasectl_ticks WHERE loop='digest'"
        )
    )
    assert ledger[0] == ledger[1] and ledger[0] >= 6


def test_everywhere_loop_runs_on_every_replica(dsn: str, replicas: list[Replica]) -> None:
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def count(ctx: TickContext) -> None:
        assert ctx.lease is None
        with lock:
            seen[ctx.replica_id] = seen.get(ctx.replica_id, 0) + 1

    spec = LoopSpec(name="sweep", interval=0.05, placement="everywhere", run=count)
    replicas.append(Replica("A", dsn, [spec]))
    replicas.append(Replica("B", dsn, [spec]))
    wait_until(lambda: seen.get("A", 0) >= 3 and seen.get("B", 0) >= 3, what="both ran")


def test_failing_tick_backs_off_and_never_kills_the_loop(dsn: str, replicas: list[Replica]) -> None:
    calls: list[float] = []

    def flaky(ctx: TickContext) -> None:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise RuntimeError("transient")

    spec = LoopSpec(name="flaky", interval=0.01, placement="everywhere", run=flaky)
    r = Replica("A", dsn, [spec])
    replicas.append(r)
    wait_until(lambda: len(calls) >= 5, what="loop kept running after failures")
    assert r.scheduler.dead_threads() == []
    # backoff 0.05, 0.1, 0.2 between the first failures: far more than the 0.01 s interval
    assert calls[3] - calls[0] >= 0.3


def test_graceful_stop_waits_for_the_running_tick(dsn: str, replicas: list[Replica]) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow(ctx: TickContext) -> None:
        started.set()
        time.sleep(0.5)
        finished.set()

    spec = LoopSpec(name="slow", interval=10, placement="everywhere", run=slow)
    r = Replica("A", dsn, [spec])
    assert started.wait(5)
    assert r.stop(grace=5.0) is True
    assert finished.is_set()


def test_lost_lease_stops_a_running_tick(dsn: str, replicas: list[Replica]) -> None:
    outcomes: list[str] = []
    entered = threading.Event()

    def long_leased(ctx: TickContext) -> None:
        entered.set()
        try:
            while True:
                ctx.check()
                time.sleep(0.01)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise

    spec = LoopSpec(name="crl", interval=60, placement="leased", run=long_leased, timeout=30)
    r = Replica("A", dsn, [spec])
    replicas.append(r)
    assert entered.wait(5)
    r.manager.step_down("crl", cooldown=30)
    wait_until(lambda: outcomes, what="tick noticed the lost lease")
    assert outcomes == ["LeaseLost"]


def test_leased_slot_is_claimed_early_but_never_starts_before_its_fire_time(
    dsn: str, conn: psycopg.Connection[Any], replicas: list[Replica]
) -> None:
    # The claim (a fenced statement) is made up to a quarter interval ahead so its round trip
    # is not lateness; the body must still start at or after the slot's fire instant.
    offsets: list[float] = []

    def note(ctx: TickContext) -> None:
        offsets.append(time.time() - ctx.tick_at.timestamp())

    spec = LoopSpec(name="punctual", interval=0.4, placement="leased", run=note, jitter=0.0)
    replicas.append(Replica("A", dsn, [spec]))
    wait_until(lambda: len(offsets) >= 8, what="eight ticks")
    assert min(offsets[1:]) >= 0, offsets  # the first may be the current slot (run_on_start)
    early = conn.execute(
        "SELECT count(*) FILTER (WHERE started_at < tick_at), count(*) FROM leasectl_ticks "
        "WHERE loop = 'punctual' AND outcome = 'ok'"
    ).fetchone()
    # claimed before the fire instant (each 0.1 s ahead; one suffices to show it happens)
    assert early is not None and early[0] >= 1


def test_a_late_slot_past_max_delay_is_recorded_missed_and_counted(
    dsn: str, conn: psycopg.Connection[Any], replicas: list[Replica]
) -> None:
    from leasectl import metrics

    ran: list[Any] = []
    now = time.time()
    current = (now // 60) * 60
    # The ledger says the slot two minutes before the current one was the last one done.
    conn.execute(
        "INSERT INTO leasectl_ticks (loop, tick_at, epoch, replica, finished_at, outcome) "
        "VALUES ('late', to_timestamp(%s), 0, 'gone', now(), 'ok')",
        (current - 120,),
    )
    before = metrics.REGISTRY.get_sample_value(
        "leasectl_loop_ticks_total", {"loop": "late", "outcome": "missed"}
    )
    spec = LoopSpec(
        name="late", interval=60, placement="leased", run=ran.append, jitter=0.0, max_delay=0.0
    )
    replicas.append(Replica("A", dsn, [spec]))

    def missed_row() -> Any:
        return conn.execute(
            "SELECT extract(epoch FROM tick_at), error FROM leasectl_ticks "
            "WHERE loop = 'late' AND outcome = 'missed'"
        ).fetchone()

    row = wait_until(missed_row, what="the late slot recorded missed")
    if float(row[0]) == current:  # not a minute boundary passed meanwhile (then: the next one)
        assert row[1].startswith("2 slot(s) missed")
    after = metrics.REGISTRY.get_sample_value(
        "leasectl_loop_ticks_total", {"loop": "late", "outcome": "missed"}
    )
    assert (after or 0) - (before or 0) >= 2
    assert ran == [] or all(c.tick_at.timestamp() > current for c in ran)


def test_everywhere_cron_loop_fires_on_whole_seconds(replicas: list[Replica], dsn: str) -> None:
    seen: list[Any] = []
    spec = LoopSpec(
        name="secs", interval=0, placement="everywhere", run=seen.append, cron="* * * * * *"
    )
    replicas.append(Replica("A", dsn, [spec]))
    wait_until(lambda: len(seen) >= 3, what="three cron fires")
    fires = [c.tick_at for c in seen[:3]]
    assert all(f.microsecond == 0 for f in fires)
    gaps = [(b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False)]
    assert all(g >= 1 and g == int(g) for g in gaps), gaps  # a slow tick skips, never drifts
