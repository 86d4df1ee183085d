"""A short drill through the real CLI: 3 replicas of `leasectl run`, faults, invariants.

2 rounds each of graceful, kill, stop and terminate; partition too when root and `ip netns`
are available (CI); db-failover (a real streaming standby promoted) on the embedded server.
It must exit 0 (every invariant holds) and its JSON must say why. A second short drill runs
one round each of wedge and join (a tick that never returns; a replica joining and leaving),
and a third drills a tiny App of the tests' own (``--app``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leasectl.tools.drill import netns

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _drill(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run `leasectl drill ARGS` on its own embedded server (or $LEASECTL_TEST_DSN); its JSON."""
    out_json = tmp_path / "drill.json"
    cmd = [sys.executable, "-m", "leasectl.cli", "drill", "--replicas", "3", "--no-progress"]
    cmd += ["--json", str(out_json), *args]
    if "--report" not in args:  # the default report file lands in the cwd (the repository)
        cmd += ["--report", str(tmp_path / "drill-report.html")]
    external = os.environ.get("LEASECTL_TEST_DSN")
    if external:
        cmd += ["--dsn", external]
    else:
        data = tmp_path / "drill"
        data.mkdir()
        data.chmod(0o755)
        cmd += ["--data-dir", str(data / "pgdata")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    doc: dict[str, Any] = json.loads(out_json.read_text())
    assert doc["ok"] is True
    assert all(c["ok"] for c in doc["checks"]), doc["checks"]
    return doc


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


def test_short_drill_wedge_and_join(tmp_path: Path) -> None:
    """One round each: a wedged tick's lease moves and its late write is refused; a joining
    replica gets its lease by a graceful hand-over and gives it back when it leaves."""
    doc = _drill(tmp_path, "--faults", "wedge,join", "--rounds", "1")
    wedge, join = doc["rounds"]
    assert wedge["kind"] == "wedge" and wedge["recovered"], wedge
    assert wedge["lease"] == "drill_wedge" and wedge["new_holder"] != wedge["victim"], wedge
    # another replica completed the next slot within timeout + wedge_grace + takeover
    assert wedge["first_tick_s"] is not None and wedge["first_tick_s"] < 20.0, wedge
    notes = " ".join(wedge["notes"])
    assert "late write was refused" in notes and "lists drill_wedge" in notes, notes
    assert join["kind"] == "join" and join["recovered"], join
    assert join["rebalance_s"] is not None and join["rebalance_back_s"] is not None, join
    assert any(n.startswith("graceful:") for n in join["notes"]), join["notes"]
    assert doc["overlaps"] == []
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["liveness"]["ok"], checks["liveness"]
    assert {lv["loop"] for lv in doc["liveness"]} >= {"notification_send", "drill_wedge"}
    assert doc["skipped_checks"] == {}


def test_drill_of_a_users_app(tmp_path: Path) -> None:
    """--app: the replicas run the App; generic checks on its leased loops, domain ones
    skipped and named."""
    doc = _drill(
        tmp_path, "--app", "tests.apps.drill_tiny:app", "--faults", "kill,wedge", "--rounds", "1"
    )
    assert [r["kind"] for r in doc["rounds"]] == ["kill", "wedge"]
    assert all(r["recovered"] for r in doc["rounds"]), doc["rounds"]
    assert doc["rounds"][0]["lease"] == "sweep"  # the App's first leased loop
    checks = {c["name"] for c in doc["checks"]}
    assert checks >= {"recovered", "no_overlap", "ticks_unique", "epochs_increase", "liveness"}
    assert set(doc["skipped_checks"]) == {
        "no_lost_notification",
        "no_duplicate_outside_crash_window",
        "signatures",
        "no_lost_job",
        "crl_numbers_increase",
    }
    assert checks.isdisjoint(doc["skipped_checks"])
    live = {lv["loop"]: lv for lv in doc["liveness"]}
    assert set(live) == {"tally", "sweep", "drill_wedge"}
    assert live["sweep"]["misfire"] == "skip" and live["tally"]["done"] > 0
    assert doc["totals"]["notifications"] == 0 and doc["totals"]["jobs"] == 0
