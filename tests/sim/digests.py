"""Trace digests of a fixed set of runs: the oracle of a refactor that must not change behaviour.

    .venv/bin/python -m tests.sim.digests > before.txt
    ... refactor ...
    .venv/bin/python -m tests.sim.digests | diff before.txt -

The same seed with the same options gives the same trace; a refactor of the lease manager
that changes any line below changed what the replicas do (or when), and must be reverted or
explained. The set: the normal suite's fixed seeds and regression seeds, more seeds at 3, 10
and 30 replicas in both standby modes, and the directed episodes' measured numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from tests.sim.episodes import TAKEOVER_KINDS, crash_after_rebalance, single_fault, wedged_release
from tests.sim.scenario import Failure, run_seed
from tests.sim.test_sim import REGRESSIONS, SEEDS


def runs() -> Iterator[tuple[int, dict[str, Any]]]:
    """(seed, options) of every run in the set."""
    for seed in [*SEEDS, *sorted(REGRESSIONS)]:
        yield seed, {}
    for n, first, count in ((3, 400000, 8), (10, 200000, 8), (30, 300000, 4)):
        for seed in range(first, first + count):
            yield seed, {"replicas": (n, n)}
            yield seed, {"replicas": (n, n), "standby": "pooled", "placement": "spread"}


def main() -> int:
    for seed, over in runs():
        try:
            r = run_seed(seed, **over)
            line = f"{r.trace_hash} {r.events} {r.options.standby}"
        except Failure as f:
            line = f"FAIL {f.code} at {f.at:.3f}"
        print(f"seed {seed} {sorted(over.items())}: {line}", flush=True)
    for seed in (1, 2, 3):
        print(f"crash_after_rebalance {seed}: {crash_after_rebalance(seed):.6f}", flush=True)
        print(f"wedged_release {seed}: {wedged_release(seed):.6f}", flush=True)
    for kind in TAKEOVER_KINDS:
        for seed in range(6):
            took, bound = single_fault(seed, kind)
            print(f"single_fault {kind} {seed}: {took:.6f} {bound:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
