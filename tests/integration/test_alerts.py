"""The shipped alert rules and dashboard against promtool and live replicas.

- ``promtool check rules`` on ``docs/operator/alerts.yaml``, and ``promtool test rules``: the
  liveness alerts fire on the series a real cluster produces (a dead holder's series go
  stale while the survivor exports 0 — the case that could never fire before every replica
  exported every lease it wants).
- Two real ``leasectl run`` processes (the real loops package, a few loops): each live
  ``/metrics`` passes ``promtool check metrics``; every metric and label an alert or a
  dashboard panel uses exists in it; the replica that does not hold a lease exports
  ``leasectl_lease_held`` 0 for it, from the start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, wait_until
from tests.integration.conftest import _free_port
from tests.unit.test_dashboard import (
    ALERTS,
    DASHBOARD,
    alert_queries,
    dashboard_queries,
    exposition_index,
    problems,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)

#: Real loops, cheap with an empty database: two leased, two everywhere.
LEASED = ("notification_send", "notification_retry")
EVERYWHERE = ("job_timeout", "session_gc")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO
    )


# -- the rules on their own ----------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


@needs_promtool
def test_liveness_alerts_fire_on_cluster_series(tmp_path: Path) -> None:
    """``promtool test rules`` with series shaped like two scraped replicas (15 s scrapes)."""
    # Annotations are templated with $value; the unit test compares expr, for and labels.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    a = {"instance": "a:9464", "job": "leasectl"}
    b = {"instance": "b:9464", "job": "leasectl"}
    series = [
        # Lease x: a holds it and dies after 45 s (its series go stale); b exports 0 throughout.
        _series("leasectl_lease_held", {**a, "lease": "x"}, "1 1 1 1 stale"),
        _series("leasectl_lease_wanted", {**a, "lease": "x"}, "1 1 1 1 stale"),
        _series("leasectl_lease_held", {**b, "lease": "x"}, "0x40"),
        _series("leasectl_lease_wanted", {**b, "lease": "x"}, "1x40"),
        # Lease y: b holds it all along (must not alert).
        _series("leasectl_lease_held", {**b, "lease": "y"}, "1x40"),
        _series("leasectl_lease_wanted", {**b, "lease": "y"}, "1x40"),
        # Leased loop x, 30 s interval: b's start (t=0) stands in for its last success.
        _series(
            "leasectl_loop_interval_seconds", {**b, "loop": "x", "placement": "leased"}, "30x40"
        ),
        _series("leasectl_loop_last_success_timestamp_seconds", {**b, "loop": "x"}, "0x40"),
        # Everywhere loop e on a: wedged from 2 min on, never succeeds after t=0.
        _series(
            "leasectl_loop_interval_seconds", {**a, "loop": "e", "placement": "everywhere"}, "60x40"
        ),
        _series("leasectl_loop_last_success_timestamp_seconds", {**a, "loop": "e"}, "0x40"),
        _series("leasectl_loop_wedged", {**a, "loop": "e"}, "0x7 1x32"),
        # Leased loop p, 30 s interval, paused on b since t=60 s: never stale, paused long.
        _series(
            "leasectl_loop_interval_seconds", {**b, "loop": "p", "placement": "leased"}, "30x40"
        ),
        _series("leasectl_loop_last_success_timestamp_seconds", {**b, "loop": "p"}, "0x40"),
        _series("leasectl_loop_paused_since_timestamp_seconds", {**b, "loop": "p"}, "0x3 60x1100"),
        # b self-fences twice; the counter starts at 0, so increase() sees the first one.
        _series("leasectl_self_fence_total", {**b, "reason": "ttl_expired"}, "0x10 1x10 2x19"),
    ]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "30s", "alertname": "LeasectlLeaseUnheld", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "LeasectlLeaseUnheld",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "lease": "x"}}],
                    },
                    {"eval_time": "1m", "alertname": "LeasectlLeasedLoopStale", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "LeasectlLeasedLoopStale",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "loop": "x"}}],
                    },
                    {"eval_time": "3m", "alertname": "LeasectlLoopStale", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "LeasectlLoopStale",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", **a, "loop": "e"}}],
                    },
                    {"eval_time": "1m", "alertname": "LeasectlLoopWedged", "exp_alerts": []},
                    {
                        "eval_time": "2m15s",
                        "alertname": "LeasectlLoopWedged",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", **a, "loop": "e"}}],
                    },
                    {"eval_time": "4h", "alertname": "LeasectlLoopPausedLong", "exp_alerts": []},
                    {
                        "eval_time": "4h2m",
                        "alertname": "LeasectlLoopPausedLong",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", "loop": "p"}}],
                    },
                    {"eval_time": "4m", "alertname": "LeasectlSelfFencing", "exp_alerts": []},
                    {
                        "eval_time": "6m",
                        "alertname": "LeasectlSelfFencing",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", **b}}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    res = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr


# -- live replicas -------------------------------------------------------------------------


class LiveReplica:
    def __init__(self, tmp: Path, dsn: str, replica_id: str) -> None:
        self.id = replica_id
        self.port = _free_port()
        config = tmp / f"{replica_id}.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database": {"dsn": dsn},
                    "replica": {"id": replica_id},
                    "scheduler": {
                        "loops_package": "leasectl.certs",
                        "only": [*LEASED, *EVERYWHERE],
                    },
                    "metrics": {"listen": f"127.0.0.1:{self.port}"},
                    "logging": {"format": "json"},
                }
            )
        )
        self.log = tmp / f"{replica_id}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "leasectl.cli", "run", "--config", str(config)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**env, "PYTHONPATH": str(REPO)},
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.id} exited {self.proc.returncode}: {self.tail()}")
        return self.get("/readyz")[0] == 200

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.id} exited {self.proc.returncode}: {self.tail()}")
        code, body = self.get("/metrics")
        return body if code == 200 else ""

    def held(self) -> dict[str, float]:
        """``{lease: value}`` of ``leasectl_lease_held`` in the live exposition."""
        return {
            labels["lease"]: value
            for name, series in exposition_samples(self.metrics())
            if name == "leasectl_lease_held"
            for labels, value in series
        }

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def exposition_samples(text: str) -> Iterator[tuple[str, list[tuple[dict[str, str], float]]]]:
    """(metric family name, [(labels, value)]) of an exposition."""
    for family in text_string_to_metric_families(text):
        yield family.name, [(dict(s.labels), s.value) for s in family.samples]


@pytest.fixture
def replicas(dsn: str, tmp_path: Path) -> Iterator[list[LiveReplica]]:
    started: list[LiveReplica] = []
    yield started
    for replica in started:
        replica.stop()


@needs_promtool
def test_live_metrics_carry_every_alert_and_panel_series(
    dsn: str, tmp_path: Path, replicas: list[LiveReplica]
) -> None:
    first = LiveReplica(tmp_path, dsn, "alerts-a")
    replicas.append(first)
    # The leases are exported as soon as /metrics answers... at the latest once ready.
    wait_until(first.ready, 60, 0.1, what="first replica ready")
    assert set(first.held()) == set(LEASED), first.tail()
    wait_until(lambda: first.held() == dict.fromkeys(LEASED, 1.0), 30, 0.1, what="first holds all")

    second = LiveReplica(tmp_path, dsn, "alerts-b")
    replicas.append(second)
    wait_until(second.ready, 60, 0.1, what="second replica ready")
    # It joined while the first held every lease, and exports each one all the same.
    assert set(second.held()) == set(LEASED), second.tail()

    def one_holder_each() -> dict[str, dict[str, float]] | None:
        both = {r.id: r.held() for r in (first, second)}
        ok = all(sorted(h[lease] for h in both.values()) == [0.0, 1.0] for lease in LEASED)
        return both if ok else None

    # Placement may hand some leases to the newcomer; whoever does not hold a lease says 0.
    wait_until(one_holder_each, 30, 0.1, what="each lease: one replica 1, the other 0")

    for replica in (first, second):
        text = replica.metrics()
        res = promtool("check", "metrics", stdin=text)
        assert res.returncode == 0, f"{replica.id}: {res.stdout}{res.stderr}"

    # What an alert or a panel reads exists in what the replicas serve (one Prometheus sees
    # both: the union of their series, as Prometheus would store it).
    index: dict[str, list[dict[str, str]]] = {}
    for replica in (first, second):
        for name, label_sets in exposition_index(replica.metrics()).items():
            index.setdefault(name, []).extend(label_sets)
    rules = yaml.safe_load(ALERTS.read_text())
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    queries = [*alert_queries(rules), *dashboard_queries(dashboard)]
    found = {where: problems(expr, index) for where, expr in queries}
    assert {where: p for where, p in found.items() if p} == {}

    # The holder stops; the survivor takes every lease over, and exports 1 for each.
    first.stop()
    assert first.proc.returncode == 0, first.tail()
    wait_until(
        lambda: second.held() == dict.fromkeys(LEASED, 1.0), 30, 0.1, what="survivor holds all"
    )
