"""Placement under crashes and restarts: 3 replicas, 6 leased loops (issue 9's acceptance).

Per round: wait until the six leases are spread 2/2/2, SIGKILL one replica (round-robin),
measure kill -> both of its leases held by the survivors (from the survivors'
``acquired`` lease events, on the database clock, against the kill instant read from the
same clock), then start it again and measure restart -> 2/2/2 again, and check that every
lease move of the rebalance was a graceful hand-over (a ``released`` event with reason
``rebalance…``, no eviction) and that no slot of any loop was written twice.

Usage::

    .venv/bin/python bench/placement.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.status import read_status  # noqa: E402
from tests.apps.spread import CREATE  # noqa: E402

LOOPS = ["alpha", "bravo", "charlie", "delta", "echo", "pinned"]
IDS = ["p-a", "p-b", "p-c"]


def start(dsn: str, rid: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(
        LEASECTL_DSN=dsn,
        LEASECTL_APP="tests.apps.spread:app",
        LEASECTL_METRICS__LISTEN="",
        LEASECTL_REPLICA__LABELS="hsm",
        LEASECTL_SCHEDULER__SHUTDOWN_GRACE="2",
        PYTHONPATH=str(REPO),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--replica-id", rid],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def holders(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    status = read_status(conn, namespace="leasectl", lease_ttl=5.0, expected=LOOPS)
    return {le.name: le.holder if le.ok else None for le in status.leases if le.name in LOOPS}


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    takeovers: list[float] = []
    rebalances: list[float] = []
    moves: list[int] = []
    ungraceful = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.ensure_running().dsn()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            migrate(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(CREATE)
                for rid in IDS:
                    procs[rid] = start(dsn, rid)
                even = {rid: 2 for rid in IDS}
                wait(lambda: Counter(holders(conn).values()) == even, 60, "2/2/2")
                for r in range(args.rounds):
                    victim = IDS[r % 3]
                    placed = holders(conn)
                    lost = sorted(n for n, h in placed.items() if h == victim)
                    killed_at: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                    procs[victim].send_signal(signal.SIGKILL)
                    procs[victim].wait(10)

                    def taken(lost: list[str] = lost, victim: str = victim) -> bool:
                        now = holders(conn)
                        return all(now[n] not in (None, victim) for n in lost)

                    wait(taken, 30, f"round {r}: {lost} taken over")
                    row = conn.execute(
                        "SELECT max(at) FROM leasectl_lease_events WHERE event = 'acquired' "
                        "AND lease = ANY(%s) AND at >= %s",
                        (lost, killed_at),
                    ).fetchone()
                    assert row is not None and row[0] is not None
                    takeovers.append((row[0] - killed_at).total_seconds())
                    restarted = time.monotonic()
                    since: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                    procs[victim] = start(dsn, victim)
                    wait(lambda: Counter(holders(conn).values()) == even, 90, "2/2/2 again")
                    rebalances.append(time.monotonic() - restarted)
                    events = conn.execute(
                        "SELECT event, coalesce(reason, '') FROM leasectl_lease_events "
                        "WHERE at >= %s AND lease = ANY(%s)",
                        (since, LOOPS),
                    ).fetchall()
                    moves.append(sum(1 for e, _ in events if e == "released"))
                    ungraceful += sum(
                        1
                        for e, why in events
                        if e == "evicted" or (e == "released" and not why.startswith("rebalance"))
                    )
                dupes = conn.execute(
                    "SELECT count(*) FROM (SELECT loop, slot FROM spread_rows "
                    "GROUP BY loop, slot HAVING count(*) > 1) d"
                ).fetchone()
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            server.stop("immediate")
    ms = [t * 1000 for t in takeovers]
    print(f"rounds: {args.rounds}")
    print(
        "crash -> both leases held by survivors (ms): "
        f"p50 {statistics.median(ms):.0f}, p99 {pct(ms, 0.99):.0f}, max {max(ms):.0f}"
    )
    print(
        "restart -> 2/2/2 again (s): "
        f"p50 {statistics.median(rebalances):.1f}, p99 {pct(rebalances, 0.99):.1f}, "
        f"max {max(rebalances):.1f}"
    )
    print(f"lease moves per rebalance: {sorted(Counter(moves).items())} (moves: rounds)")
    print(f"ungraceful moves (evictions or non-rebalance releases): {ungraceful}")
    twice = dupes[0] if dupes else "?"
    print(f"slots written twice (a killed holder's last slot may be re-run): {twice}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
