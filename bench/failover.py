"""Lease failover latency between replica processes on the embedded PostgreSQL.

Two measurements, each over ``--rounds`` hand-overs of one lease between two replica
processes (``tests/replica_proc.py``, a real :class:`leasectl.LeaseManager` each):

crash
    SIGKILL the holder at t0; the standby's acquisition (after its epoch bump) at t1.
    The server sees the socket close, frees the lock, and the standby's next try-lock poll
    (``acquire_interval`` 0.5 s, +-20 % jitter) takes it: expect up to ~0.6 s.
graceful
    SIGTERM the holder at t0 (it stops its manager: unlock, ``released_at``, NOTIFY); the
    standby's acquisition at t1. The NOTIFY wakes the standby at once.

t0 and t1 are CLOCK_MONOTONIC readings (``time.monotonic()``) taken in different processes
on one host, so they are directly comparable. Before every round the standby has finished at
least one (failed) campaign, so no round is helped by a replica's first campaign, and the
round then starts at a random phase of the standby's poll cycle (uniform over one longest
interval, 0.6 s), as a real crash would. Percentiles are nearest-rank. Timing settings are
the shipped defaults (``LeaseSettings()``).

Usage::

    .venv/bin/python bench/failover.py --rounds 60
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
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

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.settings import LeaseSettings  # noqa: E402
from tests.replica_proc import FENCE_LOG_DDL, ReplicaProcess  # noqa: E402

LEASE = "bench"
POLL_CYCLE = LeaseSettings().acquire_interval * (1 + LeaseSettings().acquire_jitter)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def fresh_database(server_dsn: str) -> str:
    name = "leasectl_bench"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    params = conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = name
    dsn = conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FENCE_LOG_DDL)
    return dsn


def campaigned(conn: psycopg.Connection[Any], replica: str) -> bool:
    """The standby's lock connection has run at least one campaign query."""
    row = conn.execute(
        "SELECT query FROM pg_stat_activity WHERE application_name = %s",
        (f"leasectl/{replica}",),
    ).fetchone()
    return row is not None and "pg_try_advisory_lock" in row[0]


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _dump(conn: psycopg.Connection[Any], *replicas: ReplicaProcess) -> None:
    """What everyone was doing when a takeover did not happen (to stderr)."""
    for r in replicas:
        print(f"replica {r.id} exit={r.proc.poll()} events={r.events[-5:]}", file=sys.stderr)
        print("\n".join(r.stderr_lines[-30:]), file=sys.stderr)
    for row in conn.execute(
        "SELECT pid, application_name, state, wait_event_type, wait_event, left(query, 60)"
        " FROM pg_stat_activity WHERE datname = current_database()"
    ):
        print(row, file=sys.stderr)
    for row in conn.execute(
        "SELECT locktype, objid, pid, mode, granted FROM pg_locks"
        " WHERE locktype IN ('advisory', 'tuple', 'transactionid')"
    ):
        print(row, file=sys.stderr)


def run(dsn: str, mode: str, rounds: int, verbose: bool) -> list[float]:
    conn = psycopg.connect(dsn, autocommit=True)
    seq = 0

    def spawn() -> ReplicaProcess:
        nonlocal seq
        seq += 1
        return ReplicaProcess(dsn, f"{mode}-{seq}", [LEASE])

    holder = spawn()
    holder.wait_event(lambda e: e["ev"] == "acquired", 30, "first acquisition")
    standby = spawn()
    latencies: list[float] = []
    last_epoch = 0
    try:
        for i in range(rounds):
            standby.ready()
            wait_for(lambda s=standby: campaigned(conn, s.id), 10, "standby campaign")
            # A crash comes at a random moment of the standby's poll cycle, not right after
            # its first campaign: start the round at a random phase of one full interval.
            time.sleep(random.uniform(0, POLL_CYCLE))
            mark = standby.mark()
            t0 = time.monotonic()
            holder.signal(signal.SIGKILL if mode == "crash" else signal.SIGTERM)
            try:
                got = standby.wait_event(
                    lambda e: e["ev"] == "acquired", 10, "takeover", start=mark
                )
            except AssertionError:
                _dump(conn, holder, standby)
                raise
            latency = got["mono"] - t0
            assert got["epoch"] > last_epoch, (got, last_epoch)
            last_epoch = got["epoch"]
            latencies.append(latency)
            if verbose:
                print(f"{mode} round {i + 1}: {latency * 1000:.1f} ms (epoch {got['epoch']})")
            holder.proc.wait(10)
            if mode == "graceful" and holder.proc.returncode != 0:
                raise RuntimeError(f"graceful holder exited {holder.proc.returncode}")
            holder.close()
            holder, standby = standby, spawn()
    finally:
        holder.close()
        standby.close()
        conn.close()
    return latencies


def summary(mode: str, values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {
        "mode": mode,
        "rounds": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "min_ms": round(min(ms), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=60, help="hand-overs per mode (>= 50)")
    p.add_argument("--dsn", help="server DSN (default: a throwaway embedded server)")
    p.add_argument("--mode", choices=["crash", "graceful", "both"], default="both")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)

    server: EmbeddedPostgres | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.dsn:
        server_dsn = args.dsn
    else:
        tmp = tempfile.TemporaryDirectory(prefix="leasectl-bench-")
        server = EmbeddedPostgres(Path(tmp.name) / "pgdata")
        server_dsn = server.ensure_running().dsn()
    try:
        dsn = fresh_database(server_dsn)
        modes = ["crash", "graceful"] if args.mode == "both" else [args.mode]
        results = [summary(m, run(dsn, m, args.rounds, args.verbose)) for m in modes]
    finally:
        if server is not None:
            server.stop("immediate")
        if tmp is not None:
            tmp.cleanup()

    goals = {"crash": 1000.0, "graceful": 100.0}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("| mode | rounds | p50 | p99 | max | mean | min | goal (p99) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['mode']} | {r['rounds']} | {r['p50_ms']} ms | {r['p99_ms']} ms | "
                f"{r['max_ms']} ms | {r['mean_ms']} ms | {r['min_ms']} ms | "
                f"<= {goals[r['mode']]:.0f} ms |"
            )
    return 0 if all(r["p99_ms"] <= goals[r["mode"]] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
