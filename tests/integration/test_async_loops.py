"""``async def`` loops for real: on the App's event-loop thread, fenced, cancelled.

In-process replicas (own LeaseManager, own pools, own event-loop thread each) for the
cancellation cases; separate processes, SIGKILL included, for the failover case.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from leasectl import AsyncTickContext, FencingRejected, TickContext
from leasectl.db import make_async_pool
from leasectl.event_loop import EventLoopThread
from leasectl.lease_manager import LeaseManager
from leasectl.leases import Lease
from leasectl.loop import LoopSpec
from leasectl.scheduler import Scheduler
from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings, SchedulerSettings
from tests.child_output import OutputFile, exit_code, tail
from tests.conftest import REPO, one, wait_until

FAST = CoreSettings(leases=LeaseSettings(acquire_interval=0.1, heartbeat_interval=0.5))
APP = REPO / "tests" / "apps" / "async_report.py"


class Replica:
    """One replica in this process: lease manager, sync pool, event-loop thread, scheduler."""

    def __init__(self, name: str, dsn: str, specs: list[LoopSpec]) -> None:
        self.pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        self.aio = EventLoopThread(lambda: make_async_pool(dsn, DatabaseSettings(), f"t/{name}"))
        self.aio.start()
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
            event_loop=self.aio,
        )
        self.scheduler.start()

    def stop(self, grace: float = 5.0) -> bool:
        drained = self.scheduler.stop(grace)
        self.manager.stop()
        self.aio.stop()
        self.pool.close()
        return drained


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        try:
            r.stop(1.0)
        except Exception:
            pass


def _ledger(conn: psycopg.Connection[Any], loop: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT tick_at, outcome, error FROM leasectl_ticks WHERE loop = %s ORDER BY tick_at",
        (loop,),
    ).fetchall()


def test_async_leased_loop_runs_on_the_event_loop_and_writes_fenced(
    dsn: str, conn: psycopg.Connection[Any], replicas: list[Replica]
) -> None:
    conn.execute("CREATE TABLE alog (slot timestamptz, epoch bigint, thread text)")

    async def write(ctx: AsyncTickContext) -> None:
        await asyncio.sleep(0)  # really awaited: a coroutine that never ran writes nothing
        async with ctx.transaction() as cur:
            await cur.execute(
                "INSERT INTO alog VALUES (%s, %s, %s)",
                (ctx.tick_at, ctx.epoch, __import__("threading").current_thread().name),
            )

    spec = LoopSpec(name="awrite", interval=0.2, placement="leased", run=write, jitter=0.0)
    replicas.append(Replica("A", dsn, [spec]))
    wait_until(lambda: one(conn.execute("SELECT count(*) FROM alog"))[0] >= 3, what="3 async rows")
    rows = conn.execute("SELECT slot, epoch, thread FROM alog").fetchall()
    assert {r[2] for r in rows} == {"leasectl-asyncio"}  # the one event-loop thread
    assert len({r[0] for r in rows}) == len(rows)
    # The ledger row is finished right after the body's transaction commits.
    wait_until(
        lambda: len([r for r in _ledger(conn, "awrite") if r[1] == "ok"]) >= 3,
        what="three ok ledger rows",
    )


def test_async_tick_is_cancelled_when_the_lease_is_lost(
    dsn: str, conn: psycopg.Connection[Any], replicas: list[Replica]
) -> None:
    seen: list[str] = []

    async def forever(ctx: AsyncTickContext) -> None:
        seen.append("started")
        try:
            await asyncio.sleep(120)  # no ctx.check(): only cancellation can stop this
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    spec = LoopSpec(name="along", interval=300, placement="leased", run=forever, timeout=120)
    r = Replica("A", dsn, [spec])
    replicas.append(r)
    wait_until(lambda: seen == ["started"], what="tick started")
    asked = time.monotonic()
    r.manager.step_down("along", cooldown=30)
    wait_until(lambda: "cancelled" in seen, what="task cancelled on lease loss")
    assert time.monotonic() - asked < 5
    # The tick is over (not wedged), and its ledger row is not 'ok'.
    wait_until(lambda: r.scheduler.loops["along"].tick_started is None, what="tick ended")
    assert [row[1] for row in _ledger(conn, "along")] != ["ok"]


def test_async_tick_is_cancelled_at_its_timeout(dsn: str, replicas: list[Replica]) -> None:
    spans: list[float] = []
    cancelled: list[bool] = []

    async def slow(ctx: AsyncTickContext) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            spans.append(time.monotonic() - ctx.deadline)  # >= 0: not before the deadline
            cancelled.append(True)
            raise

    spec = LoopSpec(name="aslow", interval=300, placement="everywhere", run=slow, timeout=0.3)
    r = Replica("A", dsn, [spec])
    replicas.append(r)
    wait_until(lambda: cancelled, what="timed-out task cancelled")
    assert 0 <= spans[0] < 5.0
    assert r.scheduler.wedged(grace=0.0) == [] or r.scheduler.loops["aslow"].tick_started is None


def test_shutdown_cancels_a_running_async_tick(dsn: str, replicas: list[Replica]) -> None:
    cancelled: list[bool] = []

    async def slow(ctx: AsyncTickContext) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    spec = LoopSpec(name="astop", interval=300, placement="everywhere", run=slow, timeout=120)
    r = Replica("A", dsn, [spec])
    replicas.append(r)  # cleaned up even if an assertion below fails (stop is idempotent)
    wait_until(lambda: r.scheduler.loops["astop"].tick_started is not None, what="tick running")
    assert r.stop(grace=0.2) is False  # not drained within the grace: cancelled
    assert cancelled == [True]


def test_superseded_async_write_is_refused(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE zlog (epoch bigint)")
    manager = LeaseManager("A", ["zombie"], FAST, dsn=dsn)
    manager.start()
    try:
        lease = manager.wait_for("zombie", 10)
    finally:
        manager.stop()  # released: the next holder bumps the epoch
    other = LeaseManager("B", ["zombie"], FAST, dsn=dsn)
    other.start()
    try:
        newer = other.wait_for("zombie", 10)
        assert newer.epoch > lease.epoch
        stale = Lease("zombie", lease.epoch, time.monotonic() + 60, time.monotonic)

        async def attempt() -> None:
            pool = AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False)
            await pool.open(wait=True)
            try:
                ctx = AsyncTickContext(
                    loop="zombie",
                    replica_id="A",
                    pool=pool,
                    config=None,
                    tick_at=__import__("datetime").datetime.now(),
                    deadline=time.monotonic() + 60,
                    lease=stale,
                )
                with pytest.raises(FencingRejected):
                    async with ctx.transaction() as cur:
                        await cur.execute("INSERT INTO zlog VALUES (%s)", (stale.epoch,))
            finally:
                await pool.close()

        asyncio.run(attempt())
    finally:
        other.stop()
    assert one(conn.execute("SELECT count(*) FROM zlog"))[0] == 0


def test_a_sync_loop_that_returns_an_awaitable_fails_its_tick_loudly(
    dsn: str, replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        return None

    def sneaky(ctx: TickContext) -> Any:  # a lambda wrapping a coroutine: not async def
        return body()

    spec = LoopSpec(name="sneaky", interval=0.1, placement="everywhere", run=sneaky)
    with caplog.at_level(logging.ERROR, logger="leasectl.scheduler"):
        replicas.append(Replica("A", dsn, [spec]))
        wait_until(
            lambda: any("returned an awaitable" in r.getMessage() for r in caplog.records),
            what="the tick failed with a clear message",
        )
    message = next(r.getMessage() for r in caplog.records if "awaitable" in r.getMessage())
    assert "declare it `async def`" in message and "sneaky" in message


# -- real processes --------------------------------------------------------------------------


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(LEASECTL_DSN=dsn, LEASECTL_METRICS__LISTEN="", PYTHONPATH=str(REPO), **extra)
    return env


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT to_regclass('reports')").fetchone() == (None,):
            return []
        return c.execute("SELECT slot, replica, epoch FROM reports ORDER BY slot, at").fetchall()


@pytest.mark.slow
def test_async_leased_loop_two_processes_sigkill_holder(
    dsn: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = _env(dsn, REPORT_EVERY="1")
    logs = [OutputFile(tmp_path / f"async-report-{i}.log") for i in range(2)]
    for log in logs:
        procs.append(log.popen([sys.executable, str(APP)], env=env))
    wait_until(lambda: len(_rows(dsn)) >= 3, timeout=60, what="three async report rows")
    holder = _rows(dsn)[-1][1]
    with psycopg.connect(dsn, autocommit=True) as c:
        pids: dict[str, int] = dict(c.execute("SELECT id, pid FROM leasectl_replicas").fetchall())
    victim = next(p for p in procs if p.pid == pids[holder])
    before = len(_rows(dsn))
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_epochs = {r[2] for r in _rows(dsn) if r[1] == holder}

    def survivor_rows() -> list[tuple[Any, ...]]:
        return [r for r in _rows(dsn)[before:] if r[1] != holder]

    wait_until(lambda: len(survivor_rows()) >= 2, timeout=60, what="the survivor's rows")
    rows = _rows(dsn)
    slots = [r[0] for r in rows]
    assert len(slots) == len(set(slots)), f"a slot was written twice: {rows}"
    assert min(r[2] for r in survivor_rows()) > max(killed_epochs)
    survivor, log = next((p, log) for p, log in zip(procs, logs, strict=True) if p is not victim)
    survivor.send_signal(signal.SIGTERM)
    assert exit_code(survivor, 60, log) == 0, tail(log)


def _cancels(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT to_regclass('cancels')").fetchone() == (None,):
            return []
        return c.execute("SELECT loop, replica, epoch FROM cancels ORDER BY at").fetchall()


@pytest.mark.slow
def test_async_ticks_cancelled_in_a_real_process_on_timeout_step_down_and_sigterm(
    dsn: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = _env(
        dsn, LEASECTL_APP="tests.apps.async_cancel:app", LEASECTL_SCHEDULER__SHUTDOWN_GRACE="1"
    )
    log = OutputFile(tmp_path / "one.log")
    proc = log.popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--replica-id", "one"], env=env, cwd=REPO
    )
    procs.append(proc)
    # timeout=1: the everywhere loop's task is cancelled a second into its tick.
    wait_until(lambda: ("overrun", "one", None) in _cancels(dsn), timeout=60, what="timeout")
    # Lease loss: step-down hands the lease over; the running task is cancelled.
    wait_until(
        lambda: [r for r in _cancels(dsn) if r[0] == "hold:started"], timeout=60, what="hold runs"
    )
    step = subprocess.run(
        [sys.executable, "-m", "leasectl.cli", "step-down", "--lease", "hold", "--cooldown", "2"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert step.returncode in (0, 1), step.stdout + step.stderr
    wait_until(
        lambda: [r for r in _cancels(dsn) if r[0] == "hold"], timeout=30, what="lease-loss cancel"
    )
    first = next(r for r in _cancels(dsn) if r[0] == "hold")
    assert first[1] == "one" and first[2] is not None
    with psycopg.connect(dsn, autocommit=True) as c:
        done = c.execute(
            "SELECT count(*) FROM leasectl_ticks WHERE loop = 'hold' AND outcome = 'ok'"
        ).fetchone()
    assert done == (0,)  # a cancelled slot is never recorded done (the next holder reruns it)
    # Shutdown: after the cooldown the replica takes the lease back and runs hold again;
    # SIGTERM drains for shutdown_grace, then cancels it; the process still exits 0.
    wait_until(
        lambda: [r for r in _cancels(dsn) if r[0] == "hold:started" and r[2] > first[2]],
        timeout=60,
        what="hold running again under a new epoch",
    )
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, 60, log) == 0, tail(log)
    assert len([r for r in _cancels(dsn) if r[0] == "hold"]) == 2
