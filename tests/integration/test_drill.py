"""A short drill through the real CLI: 3 replicas of `leasectl run`, faults, invariants.

2 rounds each of graceful, kill, stop and terminate; partition too when root and `ip netns`
are available (CI); db-failover (a real streaming standby promoted) on the embedded server.
It must exit 0 (every invariant holds) and its JSON must say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leasectl.tools.drill import netns

pytestmark = pytest.mark.slow


def test_short_drill_passes_its_invariants(tmp_path: Path) -> None:
    kinds = ["graceful", "kill", "stop", "terminate"]
    external = os.environ.get("LEASECTL_TEST_DSN")
    if netns.available()[0] and not external:
        kinds.append("partition")
    if not external:
        kinds.append("db-failover")
    out_json, out_html = tmp_path / "drill.json", tmp_path / "drill.html"
    cmd = [
        sys.executable,
        "-m",
        "leasectl.cli",
        "drill",
        "--replicas",
        "3",
        "--faults",
        ",".join(kinds),
        "--rounds",
        "2",
        "--no-progress",
        "--json",
        str(out_json),
        "--report",
        str(out_html),
    ]
    if external:
        cmd += ["--dsn", external]
    else:
        data = tmp_path / "drill"
        data.mkdir()
        data.chmod(0o755)
        cmd += ["--data-dir", str(data / "pgdata")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    doc = json.loads(out_json.read_text())
    assert doc["ok"] is True
    assert [r["kind"] for r in doc["rounds"]] == kinds * 2
    assert all(r["recovered"] for r in doc["rounds"]), doc["rounds"]
    assert doc["overlaps"] == []
    checks = {c["name"]: c for c in doc["checks"]}
    assert set(checks) >= {
        "recovered",
        "no_overlap",
        "no_lost_notification",
        "no_lost_job",
        "no_duplicate_outside_crash_window",
        "crl_numbers_increase",
        "ticks_unique",
        "epochs_increase",
    }
    assert all(c["ok"] for c in checks.values()), checks
    assert doc["totals"]["notifications"] > 0 and doc["totals"]["jobs"] > 0
    stop_rounds = [r for r in doc["rounds"] if r["kind"] == "stop"]
    assert all(any("zombie reported lost" in n for n in r["notes"]) for r in stop_rounds)
    for r in (r for r in doc["rounds"] if r["kind"] == "db-failover"):
        # every lease back on the promoted standby, above every epoch issued before
        assert r["leases_back_s"] is not None and r["timeline"] >= 2, r
        assert r["new_epoch"] >= (r["timeline"] - 1) << 32, r
    by_kind = {row["kind"]: row for row in doc["summary"]}
    assert by_kind["kill"]["takeover"]["max"] < 5.0  # generous: the benchmark has the real goal
    html = out_html.read_text()
    assert "<svg" in html and "<script" not in html.lower()
    # Nothing left behind: no namespaces of this drill, no replica processes.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(r["netns"] and r["netns"] in listed for r in doc["replicas"])
    for r in doc["replicas"]:
        assert r["exit"] is not None, r
