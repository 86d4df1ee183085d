"""docs/operator/loops.md lists every loop of the registry with its real placement."""

from __future__ import annotations

import re
from pathlib import Path

from leasectl.certs.registry import LOOP_MODULES, build_loops
from leasectl.certs.settings import LoopsSettings
from leasectl.config import from_mapping

DOC = Path(__file__).resolve().parents[2] / "docs/operator/loops.md"
ROW = re.compile(r"^\| \d+ \| `(\w+)` \| \**(everywhere|leased)\** \|", re.M)


def test_placement_table_matches_the_loops() -> None:
    rows = {m.group(1): m.group(2) for m in ROW.finditer(DOC.read_text())}
    assert set(rows) == set(LOOP_MODULES), "loops.md must list exactly the registry's loops"
    enabled = {"loop": {"enabled": True}}
    smtp = {"smtp": {"host": "smtp.example"}}  # the digest refuses to run without one
    loops = {"digest": enabled, "cloud_discovery": enabled, "notifications": smtp}
    settings = from_mapping({"loops": loops}, environ={})
    assert isinstance(settings.loops, LoopsSettings)
    specs = {spec.name: spec.placement for spec in build_loops(settings.loops)}
    assert specs == rows
