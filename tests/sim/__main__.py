"""The simulator's command line: replay one seed, shrink it, or soak many.

    .venv/bin/python -m tests.sim replay --seed 56 [--set fence_check=false] [--schedule JSON]
    .venv/bin/python -m tests.sim shrink --seed 56 [--set ...]
    .venv/bin/python -m tests.sim soak --seconds 600 [--jobs 2] [--replicas 3,10,30] \\
        [--out sim-failures.jsonl]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from tests.sim.scenario import Failure, parse_schedule, run_seed, schedule_json
from tests.sim.shrink import shrink


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        v = json.loads(value)
        out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _soak_one(args: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    seed, over = args
    t0 = time.process_time()
    try:
        r = run_seed(seed, **over)
    except Failure as f:
        return {"seed": seed, "over": over, "ok": False, "code": f.code, "report": str(f)}
    return {
        "seed": seed,
        "over": over,
        "ok": True,
        "simulated": r.simulated,
        "events": r.events,
        "faults": r.faults,
        "cpu": time.process_time() - t0,
        "replicas": r.options.replicas,
        "standby": r.options.standby,
    }


def soak(seconds: float, jobs: int, sizes: list[int], out: str, first: int) -> int:
    """Run consecutive seeds on ``jobs`` processes until ``seconds`` pass; failing seeds go
    to ``out`` (one JSON object per line). Prints a summary per replica count."""
    deadline = time.monotonic() + seconds
    seed = first
    stats: dict[tuple[int, str], list[float]] = {}
    failures = 0
    with multiprocessing.Pool(jobs) as pool:
        while time.monotonic() < deadline:
            batch = []
            for _ in range(jobs * 4):
                n = sizes[seed % len(sizes)]
                batch.append((seed, {"replicas": (n, n)}))
                seed += 1
            for res in pool.imap_unordered(_soak_one, batch):
                if not res["ok"]:
                    failures += 1
                    with open(out, "a") as fh:
                        fh.write(json.dumps(res) + "\n")
                    print(f"seed {res['seed']}: {res['code']}", flush=True)
                    continue
                key = (res["replicas"], res["standby"])
                s = stats.setdefault(key, [0, 0.0, 0.0, 0])
                s[0] += 1
                s[1] += res["simulated"]
                s[2] += res["cpu"]
                s[3] += res["faults"]
    print(f"seeds {first}..{seed - 1}, failures {failures} (in {out})")
    for (n, mode), (runs, sim_s, cpu, faults) in sorted(stats.items()):
        print(
            f"{n:3d} replicas {mode:7s}: {int(runs):5d} seeds, {sim_s / 3600:7.2f} simulated h, "
            f"{int(faults):6d} faults, {sim_s / cpu:6.0f} simulated s per CPU s"
        )
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("replay", "shrink"):
        c = sub.add_parser(name)
        c.add_argument("--seed", type=int, required=True)
        c.add_argument("--set", action="append", default=[], help="option=JSON (planted bugs)")
        c.add_argument("--schedule", help="a fault schedule as printed by a failure")
    c = sub.add_parser("soak")
    c.add_argument("--seconds", type=float, default=600.0)
    c.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    c.add_argument("--replicas", default="3,10,30")
    c.add_argument("--out", default="sim-failures.jsonl")
    c.add_argument("--first", type=int, default=int(time.time()) % 1_000_000 * 1000)
    args = p.parse_args(argv)
    if args.cmd == "soak":
        sizes = [int(x) for x in args.replicas.split(",")]
        return soak(args.seconds, args.jobs, sizes, args.out, args.first)
    over = _overrides(args.set)
    if args.cmd == "shrink":
        try:
            run_seed(args.seed, **over)
        except Failure as f:
            faults = shrink(args.seed, f.code, **over)
            print(f"{f.code}: {len(faults)} fault(s) still fail it:")
            print(f"--schedule '{schedule_json(faults)}'")
            return 1
        print("seed passes: nothing to shrink")
        return 0
    schedule = parse_schedule(args.schedule) if args.schedule else None
    try:
        r = run_seed(args.seed, schedule=schedule, **over)
    except Failure as f:
        print(f, file=sys.stderr)
        return 1
    print(f"seed {args.seed}: ok, {r.simulated:.0f} simulated s, {r.events} events")
    print(f"trace sha256 {r.trace_hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
