"""Cost of one cluster-wide rate-limit acquire on the embedded PostgreSQL (issue 12).

Measures ``RateLimiter.try_acquire`` round trips from one process, with 1, 3 and 8 threads
hitting (a) one shared bucket (row contention: every acquire updates the same row) and
(b) one bucket per thread, each a limit generous enough that nothing is refused, and also a
saturated bucket (every acquire refused) — refusals cost the same statement. Reports p50 /
p99 / max per acquire in milliseconds over ``--n`` acquires per thread, three rounds, so the
spread is visible. Goal: p50 < 1 ms. Usage::

    .venv/bin/python bench/limits.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from psycopg_pool import ConnectionPool  # noqa: E402

from leasectl.embedded import EmbeddedPostgres  # noqa: E402
from leasectl.limits import RateLimiter  # noqa: E402
from leasectl.migrate import migrate  # noqa: E402
from leasectl.settings import LimitSettings  # noqa: E402


def run(dsn: str, threads: int, n: int, shared: bool, saturated: bool) -> list[float]:
    rate = 1e-6 if saturated else 1e9
    limits = {f"b{i}": LimitSettings(rate=rate, per=1, burst=1) for i in range(threads)}
    samples: list[float] = []
    lock = threading.Lock()
    with ConnectionPool(dsn, min_size=threads, max_size=threads) as pool:
        limiter = RateLimiter(pool, limits)

        def worker(i: int) -> None:
            name = "b0" if shared else f"b{i}"
            mine = []
            for _ in range(n):
                t0 = time.perf_counter()
                limiter.try_acquire(name)
                mine.append((time.perf_counter() - t0) * 1000)
            with lock:
                samples.extend(mine)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return samples


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        dsn = server.ensure_running().dsn()
        try:
            migrate(dsn)
            print("| case | threads | p50 ms (rounds) | p99 ms (rounds) | max ms |")
            print("|---|---|---|---|---|")
            for case, shared, saturated in (
                ("one shared bucket", True, False),
                ("a bucket per thread", False, False),
                ("saturated (refused)", True, True),
            ):
                for threads in (1, 3, 8):
                    p50s, p99s, mx = [], [], 0.0
                    for _ in range(args.rounds):
                        s = run(dsn, threads, args.n, shared, saturated)
                        p50s.append(statistics.median(s))
                        p99s.append(pct(s, 0.99))
                        mx = max(mx, max(s))
                    print(
                        f"| {case} | {threads} | "
                        f"{' / '.join(f'{x:.2f}' for x in p50s)} | "
                        f"{' / '.join(f'{x:.2f}' for x in p99s)} | {mx:.1f} |"
                    )
        finally:
            server.stop("immediate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
