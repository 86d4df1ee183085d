"""The real ``leasectl`` entry point against a 3-replica cluster on the embedded server."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import LEASES, Cluster
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

LEASE_KEYS = {"name", "state", "holder", "epoch", "held_for_s", "renewed_age_s", "backend_pid"}
REPLICA_KEYS = {"id", "host", "pid", "alive", "leases", "last_seen_age_s"}


def test_status_json_three_replicas(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(3)
    res = cluster.cli("status", "--json")
    assert res.returncode == 0, res.stderr
    import json

    data = json.loads(res.stdout)
    assert set(data) >= {"leases", "replicas"}
    leases = {le["name"]: le for le in data["leases"]}
    assert set(leases) == set(LEASES)
    for le in leases.values():
        assert set(le) >= LEASE_KEYS
        assert le["state"] == "held"
        assert le["holder"] in {"r1", "r2", "r3"}
        assert le["epoch"] >= 1 and le["backend_pid"] > 0
        assert le["held_for_s"] >= 0 and 0 <= le["renewed_age_s"] < 5
        assert set(le["waiting"]) == {"r1", "r2", "r3"} - {le["holder"]}
    replicas = {r["id"]: r for r in data["replicas"]}
    assert set(replicas) == {"r1", "r2", "r3"}
    for r in replicas.values():
        assert set(r) >= REPLICA_KEYS
        assert r["alive"] is True and r["last_seen_age_s"] < 5
        assert r["pid"] == cluster.replicas[r["id"]].proc.pid
    held = sorted(n for r in replicas.values() for n in r["leases"])
    assert held == sorted(LEASES)
    table = cluster.cli("status")
    assert table.returncode == 0
    assert "alpha" in table.stdout and "held" in table.stdout and "r1" in table.stdout


def test_sigterm_hands_the_leases_over(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(3)
    before = cluster.wait_settled()
    holder = before["alpha"][0]
    assert holder is not None
    proc = cluster.replicas[holder].proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0

    def moved() -> Any:
        now = cluster.holders()
        return now if set(now) == set(LEASES) and now["alpha"][0] != holder else None

    after = wait_until(moved, timeout=10, interval=0.1, what="alpha moved after SIGTERM")
    epoch = before["alpha"][1]
    assert epoch is not None
    assert after["alpha"][1] == epoch + 1
    stopped = {r["id"]: r for r in cluster.status()["replicas"]}[holder]
    assert stopped["alive"] is False and stopped["stopped"] is True
    released = [
        line
        for line in cluster.replicas[holder].log.read_text().splitlines()
        if '"lease_released"' in line and '"shutdown"' in line
    ]
    assert len(released) == sum(1 for h, _ in before.values() if h == holder)


def test_step_down_lease_and_replica(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(3)
    before = cluster.wait_settled()
    holder, epoch = before["alpha"]
    assert epoch is not None
    res = cluster.cli("step-down", "--lease", "alpha", "--cooldown", "30")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"alpha: {holder} (epoch {epoch}) -> ")
    new_holder, new_epoch = cluster.holders()["alpha"]
    assert new_holder != holder and new_epoch == epoch + 1

    res = cluster.cli("step-down", "--replica", new_holder or "")
    assert res.returncode == 0, res.stderr
    assert f"alpha: {new_holder} (epoch {new_epoch}) -> " in res.stdout
    assert cluster.holders()["alpha"][0] != new_holder

    res = cluster.cli("step-down", "--lease", "no-such-lease", "--wait", "0")
    assert res.returncode == 1 and "not held" in res.stderr


def test_evict_asks_then_terminates(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(2)
    holder, epoch = cluster.wait_settled()["beta"]
    res = cluster.cli("evict", "--lease", "beta", input="no\n")
    assert res.returncode == 1
    assert f"replica {holder}" in res.stderr and "not evicted" in res.stderr
    assert cluster.holders()["beta"] == (holder, epoch)

    res = cluster.cli("evict", "--lease", "beta", "--yes")
    assert res.returncode == 0, res.stderr
    assert f"evicted replica {holder}" in res.stdout

    def new_epoch() -> Any:
        now = cluster.holders().get("beta")
        return now if now is not None and now[1] is not None and now[1] > (epoch or 0) else None

    wait_until(new_epoch, timeout=10, interval=0.1, what="beta re-acquired with a new epoch")
    # the evicted replica self-fenced and kept running
    assert cluster.replicas[holder or ""].proc.poll() is None


def test_metrics_health_and_ready(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(2)
    held = cluster.wait_settled()
    holder = held["alpha"][0]
    other = next(r for r in cluster.replicas if r != holder)

    def scrape(rid: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        body = urllib.request.urlopen(cluster.replicas[rid].metrics_url(), timeout=5).read()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def holder_metrics() -> Any:
        m = scrape(holder or "")
        return m if m.get("leasectl_lease_held", {}).get((("lease", "alpha"),)) == 1.0 else None

    m = wait_until(holder_metrics, timeout=10, interval=0.2, what="lease_held metric")
    assert m["leasectl_lease_epoch"][(("lease", "alpha"),)] == held["alpha"][1]
    for name in (
        "leasectl_lease_transitions_total",
        "leasectl_lease_acquire_seconds_count",
        "leasectl_heartbeat_seconds_count",
        "leasectl_loop_ticks_total",
    ):
        assert name in m, sorted(m)
    assert scrape(other).get("leasectl_lease_held", {}).get((("lease", "alpha"),), 0.0) == 0.0
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(cluster.replicas[other].metrics_url(path), timeout=5) as r:
            assert r.status == 200
