"""No-op job throughput: N replicas' job_processor against N procrastinate workers.

One throwaway embedded PostgreSQL, two databases on it (``bench_leasectl``, migrated with
``leasectl.migrate``; ``bench_procrastinate``, with procrastinate's own schema), and for each
N in ``--replicas``:

leasectl
    ``--jobs`` Pending jobs of type Issuance are inserted and analysed; then N replica
    processes each open a work pool (``leasectl.db.make_pool``, pre-filled) and, on a common
    start signal, call ``loops.job_processor.run(ctx)`` with a fresh real ``TickContext`` in a
    tight loop (no sleep between ticks) until a tick claims nothing. Settings are the shipped
    ``JobsSettings`` defaults: ``claim_batch`` 100, ``concurrency`` 4 threads per replica
    (``--claim-batch``, ``--concurrency``).
    No-op: in the replica processes only, ``job_processor.HANDLERS["Issuance"]`` is replaced
    with a handler that does no work and then completes the job exactly as a real handler
    does, in one transaction: the guarded ``complete`` UPDATE (status Running, claimed_by me,
    claimed attempt) and the ``job_completed`` audit row. So each job costs: its share of the
    batched SKIP LOCKED claim, then one guarded completion transaction.
procrastinate
    ``--jobs`` jobs of a no-op task (``async def noop(): return None``) are deferred in bulk
    (``Task.batch_defer_async``) and analysed; then N worker processes each open their app
    (``PsycopgConnector`` pool pre-filled) and, on the same kind of start signal, run
    ``app.run_worker_async(concurrency=4, wait=False, listen_notify=True,
    fetch_job_polling_interval=0.05, install_signal_handlers=False)``. ``wait=False`` makes a
    worker return once it finds no job, so it stops as soon as the queue is drained.

Wall time runs from the start signal (processes already started, imported and connected) to
the last process's finish (a CLOCK_MONOTONIC reading each process takes right after its last
job), and the databases are checked afterwards: every job Completed/succeeded exactly once.
The two systems alternate for each N, leasectl first; ``--rounds`` repeats each pair. The
table reports each system's median round, the ratio (leasectl jobs/s over procrastinate
jobs/s) of every back-to-back pair and their median, and the client CPU time per job (sum of
``time.process_time()`` of the N processes over the run; the server's CPU is not in it).
``--procrastinate-concurrency`` changes procrastinate's concurrency (4 is its best setting in
our tries: 1 and 10 were slower).

procrastinate is NOT a leasectl dependency; run this in a separate bench venv::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e . procrastinate
    .venv-bench/bin/python bench/jobs.py            # or: make bench-jobs
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib.util
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import conninfo  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402

CONCURRENCY = 4  # leasectl's JobsSettings.concurrency default; procrastinate gets the same
CLAIM_BATCH = 100  # leasectl's JobsSettings.claim_batch default
POLL = 0.05  # procrastinate fetch_job_polling_interval (only used if a worker would wait)
GOAL = 3.0


# -- helpers -----------------------------------------------------------------------------


def db_dsn(server_dsn: str, name: str) -> str:
    params = conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = name
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return db_dsn(server_dsn, name)


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def run_processes(target: Any, args_for: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """Start one process per args tuple, release them together, return (wall s, results).

    Each process puts ``("ready", name)`` once set up, waits for the start event, does its work
    and puts ``("done", result)`` where ``result["finished"]`` is its monotonic finish time.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=target, args=(*a, queue, go)) for a in args_for]
    for p in procs:
        p.start()
    ready = 0
    while ready < len(procs):
        kind, value = queue.get(timeout=120)
        if kind == "error":
            raise RuntimeError(value)
        ready += 1
    t0 = time.monotonic()
    go.set()
    results = []
    while len(results) < len(procs):
        kind, value = queue.get(timeout=900)
        if kind == "error":
            raise RuntimeError(value)
        results.append(value)
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"{p.name} exited {p.exitcode}")
    return max(r["finished"] for r in results) - t0, results


# -- leasectl ------------------------------------------------------------------------------


def leasectl_prepare(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, audit_events")
        conn.execute(
            "INSERT INTO jobs (id, type) "
            "SELECT 'bench-' || lpad(g::text, 7, '0'), 'Issuance' FROM generate_series(1, %s) g",
            (jobs,),
        )
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE audit_events")


def leasectl_replica(
    dsn: str, replica: str, concurrency: int, batch: int, queue: Any, go: Any
) -> None:
    try:
        from leasectl.db import make_pool
        from leasectl.loop import TickContext
        from leasectl.settings import DatabaseSettings
        from loops import job_processor
        from loops._common import actor, transaction
        from loops.settings import LoopsSettings

        Q = job_processor.Q

        def noop_issue(ctx: TickContext, job: dict[str, Any], settings: LoopsSettings) -> None:
            # No work at all; then the same guarded completion transaction as _issue.
            guard = {"id": job["id"], "replica": ctx.replica_id, "attempts": job["attempts"]}
            with transaction(ctx) as cur:
                cur.execute(Q["complete"], guard)
                if cur.fetchone() is None:
                    raise job_processor._ClaimLost(job["id"])
                cur.execute(
                    Q["audit"],
                    {
                        "actor": actor(ctx),
                        "action": "job_completed",
                        "job_id": job["id"],
                        "details": Jsonb({"type": job["type"], "attempts": job["attempts"]}),
                    },
                )

        job_processor.HANDLERS["Issuance"] = noop_issue  # this bench process only
        settings = LoopsSettings(
            jobs=dataclasses.replace(
                LoopsSettings().jobs, concurrency=concurrency, claim_batch=batch
            )
        )
        size = settings.jobs.concurrency + 1
        db = dataclasses.replace(DatabaseSettings(), pool_min_size=size, pool_max_size=size)
        pool = make_pool(dsn, db, f"leasectl/{replica}")
        pool.wait(timeout=30)  # all connections open before the clock starts
        queue.put(("ready", replica))
        go.wait()
        cpu0 = time.process_time()
        stats: dict[str, int] = {}
        ticks = 0
        while True:
            ctx = TickContext(
                loop=job_processor.NAME,
                replica_id=replica,
                pool=pool,
                config=settings,
                tick_at=dt.datetime.now(dt.UTC),
                deadline=time.monotonic() + job_processor.TIMEOUT,
            )
            job_processor.run(ctx)
            ticks += 1
            for k, v in ctx.stats.items():
                stats[k] = stats.get(k, 0) + v
            if not ctx.stats.get("claimed"):
                break
        finished, cpu = time.monotonic(), time.process_time() - cpu0
        pool.close()
        result = {"replica": replica, "finished": finished, "cpu": cpu, "ticks": ticks}
        queue.put(("done", {**result, **stats}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{replica}: {type(exc).__name__}: {exc}"))
        raise


def leasectl_round(
    dsn: str, n: int, jobs: int, concurrency: int, batch: int
) -> tuple[float, float]:
    leasectl_prepare(dsn, jobs)
    wall, results = run_processes(
        leasectl_replica, [(dsn, f"r{i}", concurrency, batch) for i in range(n)]
    )
    completed = sum(r.get("completed", 0) for r in results)
    rows = scalar(dsn, "SELECT count(*) FROM jobs WHERE status = 'Completed' AND attempts = 1")
    audits = scalar(dsn, "SELECT count(*) FROM audit_events WHERE action = 'job_completed'")
    if not completed == rows == audits == jobs:
        raise RuntimeError(f"leasectl: completed={completed} rows={rows} audits={audits}")
    return wall, sum(r["cpu"] for r in results)


# -- procrastinate ---------------------------------------------------------------------------


def procrastinate_app(dsn: str, pool_size: int) -> Any:
    import procrastinate

    # It warns that the App is built in __main__: it is, on purpose, in every bench process.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size)
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    return app


def procrastinate_schema(dsn: str) -> None:
    async def go() -> None:
        app = procrastinate_app(dsn, 1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(go())


def procrastinate_prepare(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers CASCADE"
        )

    async def defer() -> None:
        app = procrastinate_app(dsn, 2)
        async with app.open_async():
            task = app.tasks["noop"]
            for start in range(0, jobs, 5000):
                await task.batch_defer_async(*({} for _ in range(min(5000, jobs - start))))

    asyncio.run(defer())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE procrastinate_jobs")
        conn.execute("VACUUM ANALYZE procrastinate_events")


def procrastinate_worker(dsn: str, name: str, concurrency: int, queue: Any, go: Any) -> None:
    try:

        async def main() -> tuple[float, float]:
            app = procrastinate_app(dsn, concurrency + 2)
            async with app.open_async():
                pool = app.connector._async_pool
                if pool is not None:
                    await pool.wait(timeout=30)
                queue.put(("ready", name))
                await asyncio.get_running_loop().run_in_executor(None, go.wait)
                cpu0 = time.process_time()
                await app.run_worker_async(
                    name=name,
                    queues=["bench"],
                    concurrency=concurrency,
                    wait=False,
                    listen_notify=True,
                    fetch_job_polling_interval=POLL,
                    install_signal_handlers=False,
                )
                return time.monotonic(), time.process_time() - cpu0

        finished, cpu = asyncio.run(main())
        queue.put(("done", {"replica": name, "finished": finished, "cpu": cpu}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{name}: {type(exc).__name__}: {exc}"))
        raise


def procrastinate_round(dsn: str, n: int, jobs: int, concurrency: int) -> tuple[float, float]:
    procrastinate_prepare(dsn, jobs)
    wall, results = run_processes(
        procrastinate_worker, [(dsn, f"w{i}", concurrency) for i in range(n)]
    )
    done = scalar(dsn, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
    total = scalar(dsn, "SELECT count(*) FROM procrastinate_jobs")
    if not done == total == jobs:
        raise RuntimeError(f"procrastinate: succeeded={done} total={total} expected={jobs}")
    return wall, sum(r["cpu"] for r in results)


# -- main ------------------------------------------------------------------------------------


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} vCPU {model}, Python {platform.python_version()}, load avg {load}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", default="1,2,4", help="comma-separated N (default 1,2,4)")
    p.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per run (M)")
    p.add_argument("--rounds", type=int, default=1, help="runs per system and N (median)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY, help="leasectl jobs.concurrency")
    p.add_argument("--claim-batch", type=int, default=CLAIM_BATCH, help="leasectl jobs.claim_batch")
    p.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=CONCURRENCY,
        help="procrastinate worker concurrency",
    )
    p.add_argument("--dsn", help="server DSN (default: a throwaway embedded server)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("procrastinate") is None:
        print(
            "procrastinate is not installed here; it is not a leasectl dependency. Run:\n"
            "  python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . procrastinate\n"
            "  .venv-bench/bin/python bench/jobs.py",
            file=sys.stderr,
        )
        return 2
    from importlib.metadata import version

    replicas = [int(x) for x in args.replicas.split(",")]
    server: EmbeddedPostgres | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.dsn:
        server_dsn = args.dsn
    else:
        tmp = tempfile.TemporaryDirectory(prefix="leasectl-bench-jobs-")
        server = EmbeddedPostgres(Path(tmp.name) / "pgdata")
        server_dsn = server.ensure_running().dsn()
    rows: list[tuple[int, tuple[float, float], tuple[float, float], list[float]]] = []
    try:
        pg_version = scalar(server_dsn, "SHOW server_version")
        ldsn = create_database(server_dsn, "bench_leasectl")
        migrate(ldsn)
        pdsn = create_database(server_dsn, "bench_procrastinate")
        procrastinate_schema(pdsn)
        for n in replicas:
            lr, pr = [], []
            for r in range(args.rounds):
                lr.append(leasectl_round(ldsn, n, args.jobs, args.concurrency, args.claim_batch))
                pr.append(procrastinate_round(pdsn, n, args.jobs, args.procrastinate_concurrency))
                print(
                    f"N={n} round {r + 1}: leasectl {args.jobs / lr[-1][0]:.0f} jobs/s"
                    f" ({lr[-1][0]:.2f} s), procrastinate {args.jobs / pr[-1][0]:.0f} jobs/s"
                    f" ({pr[-1][0]:.2f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            # Each system's median round by wall time (upper median for an even count), and
            # the ratio of every back-to-back pair: both ran under the same background load.
            ratios = sorted(p[0] / r[0] for r, p in zip(lr, pr, strict=True))
            rows.append((n, sorted(lr)[len(lr) // 2], sorted(pr)[len(pr) // 2], ratios))
    finally:
        if server is not None:
            server.stop("immediate")
        if tmp is not None:
            tmp.cleanup()

    print(
        f"\n{machine()}, PostgreSQL {pg_version}, psycopg {version('psycopg')}, "
        f"procrastinate {version('procrastinate')}; "
        f"M = {args.jobs} jobs, {args.rounds} round(s) per cell (median); leasectl"
        f" claim_batch {args.claim_batch}, concurrency {args.concurrency}; procrastinate"
        f" concurrency {args.procrastinate_concurrency}\n"
    )
    print(
        "| N | leasectl jobs/s (wall) | procrastinate jobs/s (wall) | ratio (median of pairs)"
        " | ratio per pair | client CPU per job, leasectl / procrastinate | goal (>= 3x) |"
    )
    print("|---|---|---|---|---|---|---|")
    met = True
    m = args.jobs
    for n, (lw, lcpu), (pw, pcpu), ratios in rows:
        ratio = statistics.median(ratios)
        met = met and ratio >= GOAL
        print(
            f"| {n} | {m / lw:,.0f} ({lw:.2f} s) | {m / pw:,.0f} ({pw:.2f} s) | {ratio:.2f}x"
            f" | {', '.join(f'{x:.2f}x' for x in ratios)}"
            f" | {lcpu / m * 1000:.2f} ms / {pcpu / m * 1000:.2f} ms"
            f" | {'met' if ratio >= GOAL else 'missed'} |"
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
