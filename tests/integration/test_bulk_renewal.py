"""bench/bulk_renewal.py at a small N: its invariants hold with three real replicas.

Three ``leasectl run`` processes renew 50 certificates due at once (renewal_check -> jobs ->
job_processor signing real certificates -> completed) and deliver their expiry alerts to a real
signed-webhook receiver; then exactly one new version per certificate, one job per certificate,
every alert delivered once and no notification key received twice.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bulk_renewal.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_bulk_renewal", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bulk_renewal_invariants_at_small_n(dsn: str) -> None:
    bench = _bench()

    receipt = bench.run(dsn, 50, replica_count=3, timeout=120.0)

    assert receipt.invariants and all(receipt.invariants.values()), receipt.invariants
    assert receipt.problems == []
    assert receipt.seconds > 0 and receipt.certs_per_second > 0
    assert receipt.stats["xact_commit"] > 0
