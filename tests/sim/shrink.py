"""Shrink a failing run's fault schedule (ddmin): the fewest faults that fail the same way.

The seed and the options stay fixed; each fault draws its own choices from its own stream
(:class:`tests.sim.scenario.Fault`), so removing one does not change the others. A candidate
is kept only if the *same* invariant fails. Interleaving-sensitive failures can vanish when a
fault goes: the original seed stays the bug report, the shrunk schedule is a help to read it.
"""

from __future__ import annotations

from typing import Any

from tests.sim.scenario import Failure, Fault, draw_options, draw_schedule, run_seed


def fails_with(seed: int, schedule: list[Fault], code: str, **over: Any) -> bool:
    try:
        run_seed(seed, schedule=schedule, **over)
    except Failure as f:
        return f.code == code
    return False


def shrink(seed: int, code: str, **over: Any) -> list[Fault]:
    """ddmin over the seed's schedule, keeping failures of invariant ``code``."""
    faults = draw_schedule(draw_options(seed, **over))
    n = 2
    while len(faults) >= 2:
        chunk = max(1, len(faults) // n)
        parts = [faults[i : i + chunk] for i in range(0, len(faults), chunk)]
        for i in range(len(parts)):
            rest = [f for j, p in enumerate(parts) if j != i for f in p]
            if fails_with(seed, rest, code, **over):
                faults, n = rest, max(n - 1, 2)
                break
        else:
            if chunk == 1:
                break
            n = min(len(faults), n * 2)
    return faults
