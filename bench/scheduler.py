"""Scheduler timing on the embedded PostgreSQL (issue 18): lateness, async cost, ledger size.

1. **Tick-start lateness**: a leased loop every ``--interval`` s with jitter 0, one replica
   (its own LeaseManager, pool and, for async, event-loop thread); the loop body records
   ``time.time() - ctx.tick_at`` as its first statement, so the figure includes the fenced
   ledger claim (one statement) and, for async, the hop onto the event loop. Sync and async,
   on an idle machine and under CPU load (one busy process per core, bounded in time).
   Goal on an idle replica: p99 <= 20 ms.
2. **What an async tick adds over a sync one**: ``EventLoopThread.run_tick`` of a no-op
   coroutine vs calling a no-op function, and a one-statement (unfenced) transaction through
   the async pool vs the sync pool (``--n`` calls each).
3. **Ledger size under a 1 s loop** with ``scheduler.ledger_retention`` = ``--retention`` s
   and the built-in retention loop: rows sampled every second for ``--ledger-seconds``.

Usage::

    nice -n -10 .venv/bin/python bench/scheduler.py [--ticks 100] [--interval 0.5] [--rounds 2]

(``nice`` stands in for an idle machine on a shared one; the burners inherit it, so "CPU
load" is one busy process per core at the replica's own priority.) With ``--interval`` below
about 0.3 s a tick's own bookkeeping (two statements after the body) can end after the next
slot's early-claim point, and those slots are claimed late.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from leasectl.db import make_async_pool  # noqa: E402
from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.event_loop import EventLoopThread  # noqa: E402
from leasectl.lease_manager import LeaseManager  # noqa: E402
from leasectl.ledger import retention_loop  # noqa: E402
from leasectl.loop import AsyncTickContext, LoopSpec, TickContext  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.scheduler import Scheduler  # noqa: E402
from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings  # noqa: E402

SETTINGS = CoreSettings(leases=LeaseSettings(acquire_interval=0.1, heartbeat_interval=0.5))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def _burn(until: float) -> None:
    x = 0
    while time.time() < until:
        x += 1


class Replica:
    def __init__(self, dsn: str, specs: list[LoopSpec]) -> None:
        self.pool = ConnectionPool(dsn, min_size=2, max_size=4, open=True)
        self.aio = EventLoopThread(lambda: make_async_pool(dsn, DatabaseSettings(), "bench"))
        self.aio.start()
        leased = [s.name for s in specs if s.placement == "leased"]
        self.manager = LeaseManager("bench", leased, SETTINGS, dsn=dsn)
        self.manager.start()
        for name in leased:
            self.manager.wait_for(name, 10)
        self.scheduler = Scheduler(
            specs,
            replica_id="bench",
            pool=self.pool,
            config=None,
            lease_manager=self.manager,
            event_loop=self.aio,
        )
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop(5)
        self.manager.stop()
        self.aio.stop()
        self.pool.close()


def lateness(dsn: str, *, use_async: bool, ticks: int, interval: float, load: bool) -> list[float]:
    """Milliseconds from each slot's fire instant to the start of the loop body."""
    samples: list[float] = []
    done = threading.Event()

    def note(ctx: TickContext | AsyncTickContext) -> None:
        samples.append((time.time() - ctx.tick_at.timestamp()) * 1000)
        if len(samples) >= ticks:
            done.set()

    async def run_async(ctx: AsyncTickContext) -> None:
        note(ctx)

    def run_sync(ctx: TickContext) -> None:
        note(ctx)

    name = f"late_{'a' if use_async else 's'}_{'load' if load else 'idle'}_{time.time_ns()}"
    spec = LoopSpec(
        name=name,
        interval=interval,
        placement="leased",
        run=run_async if use_async else run_sync,
        jitter=0.0,
        run_on_start=False,
    )
    burners: list[multiprocessing.Process] = []
    if load:
        until = time.time() + ticks * interval * 3 + 30  # bounded even if the run stalls
        for _ in range(os.cpu_count() or 2):
            p = multiprocessing.Process(target=_burn, args=(until,), daemon=True)
            p.start()
            burners.append(p)
    replica = Replica(dsn, [spec])
    try:
        done.wait(ticks * interval * 3 + 30)
    finally:
        replica.stop()
        for p in burners:
            p.terminate()
            p.join(5)
    return samples[1:ticks]  # the first slot may start late by design (run_on_start=False)


def async_cost(dsn: str, n: int) -> dict[str, list[float]]:
    """Microseconds per call: async tick hop vs direct call; a transaction async vs sync."""
    aio = EventLoopThread(lambda: make_async_pool(dsn, DatabaseSettings(), "bench-cost"))
    aio.start()
    out: dict[str, list[float]] = {"sync noop": [], "async noop": [], "sync tx": [], "async tx": []}

    def ctx(pool: Any, cls: type) -> Any:
        return cls(
            loop="cost",
            replica_id="bench",
            pool=pool,
            config=None,
            tick_at=__import__("datetime").datetime.now(),
            deadline=time.monotonic() + 600,
        )

    async def anoop(c: AsyncTickContext) -> None:
        return None

    def snoop(c: TickContext) -> None:
        return None

    async def atx(c: AsyncTickContext) -> None:
        async with c.transaction() as cur:
            await cur.execute("SELECT 1")

    def stx(c: TickContext) -> None:
        with c.transaction() as cur:
            cur.execute("SELECT 1")

    with ConnectionPool(dsn, min_size=2, max_size=2, open=True) as pool:
        cases: list[tuple[str, Callable[[], None]]] = [
            ("sync noop", lambda: snoop(ctx(pool, TickContext))),
            ("async noop", lambda: aio.run_tick(anoop, ctx(aio.pool, AsyncTickContext))),
            ("sync tx", lambda: stx(ctx(pool, TickContext))),
            ("async tx", lambda: aio.run_tick(atx, ctx(aio.pool, AsyncTickContext))),
        ]
        for label, call in cases:
            for _ in range(50):
                call()  # warm up (connections, code paths)
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                out[label].append((time.perf_counter() - t0) * 1e6)
    aio.stop()
    return out


def ledger_rows(dsn: str, retention: float, seconds: float) -> list[int]:
    """Ledger rows of a 1 s leased loop, sampled each second, with retention enforced."""

    def beat(ctx: TickContext) -> None:
        return None

    loop = LoopSpec(name="beat", interval=1.0, placement="leased", run=beat, jitter=0.0)
    gc = retention_loop(retention)
    replica = Replica(dsn, [loop, gc])
    rows = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(1.0)
                row = conn.execute("SELECT count(*) FROM leasectl_ticks WHERE loop='beat'")
                rows.append(int(row.fetchone()[0]))  # type: ignore[index]
    finally:
        replica.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--retention", type=float, default=10.0)
    ap.add_argument("--ledger-seconds", type=float, default=40.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.ensure_running().dsn()
        try:
            migrate(dsn)
            print(f"## tick-start lateness, every {args.interval:g}s, jitter 0, ms")
            print("| case | p50 (rounds) | p99 (rounds) | max |")
            print("|---|---|---|---|")
            for load in (False, True):
                for use_async in (False, True):
                    p50s, p99s, worst = [], [], 0.0
                    for _ in range(args.rounds):
                        xs = lateness(
                            dsn,
                            use_async=use_async,
                            ticks=args.ticks,
                            interval=args.interval,
                            load=load,
                        )
                        p50s.append(f"{pct(xs, 0.5):.1f}")
                        p99s.append(f"{pct(xs, 0.99):.1f}")
                        worst = max(worst, max(xs))
                    label = f"{'async' if use_async else 'sync'}, {'CPU load' if load else 'idle'}"
                    print(f"| {label} | {' / '.join(p50s)} | {' / '.join(p99s)} | {worst:.1f} |")
            print(f"\n## cost per call, µs (n={args.n})")
            print("| case | p50 | p99 |")
            print("|---|---|---|")
            for label, xs in async_cost(dsn, args.n).items():
                print(f"| {label} | {statistics.median(xs):.0f} | {pct(xs, 0.99):.0f} |")
            rows = ledger_rows(dsn, args.retention, args.ledger_seconds)
            print(
                f"\n## ledger rows of a 1 s loop, retention {args.retention:g}s, "
                f"{args.ledger_seconds:g}s: max {max(rows)}, last {rows[-1]}, samples {rows}"
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
