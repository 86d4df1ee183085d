"""Time to read and render the status page from a 300-lease, 30-replica database (issue 22).

Builds the cluster the page reads, on the embedded PostgreSQL: 30 replica rows, each with a
live lock session (``application_name leasectl/<id>``) holding the advisory locks of its 10
leases, 300 lease rows, a tick ledger of ``--ledger`` slots per leased loop, the run history
(each leased loop's last run on its holder, one everywhere loop's on all 30 replicas), 5,000
lease events, 20 rate-limit buckets and a pause. Then times what a replica does per request
to ``/``: ``status.read_cluster`` through a pool connection plus ``status_page.render_page``,
``--n`` requests per round, three rounds.
Wall time (p50, p99, max) and this process's CPU time per request (load-independent: the
rest is the server's time and waiting for a core); the 1-minute load average is printed with
each round, since the machine is shared. Goal: p99 < 100 ms. Usage::

    .venv/bin/python bench/status_page.py [--n 200] [--rounds 3] [--ledger 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from leasectl import status_page  # noqa: E402
from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.keys import int4_hash, namespace_for  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.settings import LimitSettings, Settings  # noqa: E402
from leasectl.status import read_cluster  # noqa: E402

REPLICAS, PER_REPLICA = 30, 10


def build(dsn: str, ledger: int) -> list[psycopg.Connection[object]]:
    """The database of a 300-lease, 30-replica cluster; returns the held lock sessions."""
    ns = namespace_for(Settings().leases.namespace)
    leases = [f"loop-{i:03d}" for i in range(REPLICAS * PER_REPLICA)]
    with psycopg.connect(dsn, autocommit=True) as c:
        for r in range(REPLICAS):
            mine = leases[r * PER_REPLICA : (r + 1) * PER_REPLICA]
            c.execute(
                "INSERT INTO leasectl_replicas (id, host, pid, version, loops, campaigns_for) "
                "VALUES (%s, %s, %s, '0.1.0', %s, %s)",
                (f"r{r:02d}", f"host-{r:02d}", 1000 + r, leases + ["mailer"], leases),
            )
            for n in mine:
                c.execute(
                    "INSERT INTO leasectl_leases "
                    "(name, key, epoch, holder, acquired_at, renewed_at) "
                    "VALUES (%s, %s, 7, %s, now() - interval '1 hour', now())",
                    (n, int4_hash(n), f"r{r:02d}"),
                )
        c.execute(
            "INSERT INTO leasectl_ticks (loop, tick_at, epoch, replica, finished_at, outcome) "
            "SELECT l.name, now() - make_interval(secs => s * 60), 7, l.holder, now(), 'ok' "
            "FROM leasectl_leases l, generate_series(1, %s) s",
            (ledger,),
        )
        # Run history (issue 18): each leased loop's last run on its holder, and one
        # everywhere loop's last run on every replica.
        c.execute(
            "INSERT INTO leasectl_loop_runs (loop, replica, placement, schedule, tz, tick_at, "
            "started_at, finished_at, seconds, outcome, next_fire_at) "
            "SELECT name, holder, 'leased', 'every 60s', 'UTC', now(), now(), now(), 0.01, "
            "'ok', now() + interval '60 seconds' FROM leasectl_leases"
        )
        c.execute(
            "INSERT INTO leasectl_loop_runs (loop, replica, placement, schedule, tz, tick_at, "
            "started_at, finished_at, seconds, outcome, next_fire_at) "
            "SELECT 'mailer', id, 'everywhere', 'every 5s', 'UTC', now(), now(), now(), 0.01, "
            "'ok', now() + interval '5 seconds' FROM leasectl_replicas"
        )
        c.execute(
            "INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason) "
            "SELECT 'loop-' || lpad((s % 300)::text, 3, '0'), s, 'r00', 'acquired', 'campaign' "
            "FROM generate_series(1, 5000) s"
        )
        c.execute(
            "INSERT INTO leasectl_rate_limits (key, tat) "
            "SELECT 'smtp:d' || s, now() + interval '1 second' FROM generate_series(1, 20) s"
        )
        c.execute(
            "INSERT INTO leasectl_loop_pauses (loop, paused_by, reason) "
            "VALUES ('loop-007', 'bench', 'mailer incident')"
        )
        c.execute("ANALYZE")
    sessions = []
    for r in range(REPLICAS):
        s = psycopg.connect(dsn, autocommit=True, application_name=f"leasectl/r{r:02d}")
        pid = s.info.backend_pid
        for n in leases[r * PER_REPLICA : (r + 1) * PER_REPLICA]:
            s.execute("SELECT pg_advisory_lock(%s::integer, %s::integer)", (ns, int4_hash(n)))
        s.execute(
            "UPDATE leasectl_leases SET holder_backend_pid = %s WHERE holder = %s",
            (pid, f"r{r:02d}"),
        )
        sessions.append(s)
    return sessions


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ledger", type=int, default=100, help="ledger slots per leased loop")
    args = ap.parse_args()
    settings = Settings(limits={"smtp": LimitSettings(rate=10, per=1, burst=20, per_scope=True)})
    # Nobody heartbeats here: a long lease_ttl keeps the built leases "held" for the run.
    settings = replace(settings, leases=replace(settings.leases, lease_ttl=86400.0))
    identity = {"replica": "r00", "host": "host-00", "pid": 1000, "version": "0.1.0"}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.ensure_running().dsn()
        try:
            migrate(dsn)
            sessions = build(dsn, args.ledger)
            print(
                "| round | requests | read p50 ms | render p50 ms | total p50 ms | p99 ms "
                "| max ms | client CPU ms | page KiB | load avg |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
                for rnd in range(1, args.rounds + 1):
                    reads, renders, totals, size = [], [], [], 0
                    cpu0 = time.process_time()
                    for _ in range(args.n):
                        t0 = time.perf_counter()
                        with pool.connection() as conn:
                            status = read_cluster(conn, settings, dsn=dsn)
                        t1 = time.perf_counter()
                        page = status_page.render_page(status, identity)
                        t2 = time.perf_counter()
                        reads.append((t1 - t0) * 1000)
                        renders.append((t2 - t1) * 1000)
                        totals.append((t2 - t0) * 1000)
                        size = len(page.encode())
                    cpu = (time.process_time() - cpu0) / args.n * 1000
                    assert len(status.leases) == REPLICAS * PER_REPLICA, len(status.leases)
                    assert len(status.loops) == REPLICAS * PER_REPLICA + 1, len(status.loops)
                    assert len(status.replicas) == REPLICAS, len(status.replicas)
                    held = sum(le.state == "held" for le in status.leases)
                    assert held == 300, [(le.name, le.state, le.reason) for le in status.leases][:3]
                    print(
                        f"| {rnd} | {args.n} | {statistics.median(reads):.1f} | "
                        f"{statistics.median(renders):.1f} | {statistics.median(totals):.1f} | "
                        f"{pct(totals, 0.99):.1f} | {max(totals):.1f} | {cpu:.1f} | "
                        f"{size / 1024:.0f} | {os.getloadavg()[0]:.1f} |"
                    )
            for s in sessions:
                s.close()
        finally:
            server.stop("immediate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
