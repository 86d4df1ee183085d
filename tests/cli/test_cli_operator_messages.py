"""What the operator commands say when more moves, or less, than asked (issue 22's "also
found"): evict names every lease the terminated session held; a step-down that leaves a lease
free names the cooldowns that keep it free and when they end; event reasons are prose."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.cli.conftest import Cluster, cli_env, run_cli, settled


def test_evict_names_every_lease_that_moves(make_cluster: Callable[[int], Cluster]) -> None:
    cluster = make_cluster(1)  # r1 holds alpha and beta on one lock session
    settled(cluster)
    res = cluster.cli("evict", "--lease", "beta", input="no\n")
    assert res.returncode == 1, res
    assert "It also holds alpha: they move too." in res.stderr
    assert "every lease it holds moves (alpha, beta)" in res.stderr


def test_step_down_says_which_cooldown_keeps_a_lease_free(
    make_cluster: Callable[[int], Cluster],
) -> None:
    cluster = make_cluster(2)
    holder, _ = settled(cluster)["alpha"]
    assert holder is not None
    res = cluster.cli("step-down", "--lease", "alpha", "--cooldown", "20")
    assert res.returncode == 0, res.stderr
    new_holder = cluster.holders()["alpha"][0]
    assert new_holder is not None and new_holder != holder
    # Drain the new holder: the only other candidate is still in its 20 s cooldown.
    res = cluster.cli("step-down", "--replica", new_holder, "--cooldown", "20", "--wait", "1")
    assert res.returncode == 1, res
    assert "alpha: not moved within 1s (now free)" in res.stderr
    assert f"{holder} stays away from alpha after a step-down until" in res.stderr
    assert f"{new_holder} stays away from alpha after a step-down until" in res.stderr
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        reasons = [
            r[0]
            for r in c.execute(
                "SELECT reason FROM leasectl_lease_events WHERE event = 'step_down_requested'"
            )
        ]
    assert reasons == [
        f"{holder} hands over alpha and stays away 20s",
        f"{new_holder} hands over every lease and stays away from all 20s",
    ]
    assert not any("None" in r for r in reasons)


def test_config_check_reports_unknown_only_with_other_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("leases:\n  lease_ttl: -1\nscheduler:\n  only: [nosuch, renewal_check]\n")
    res = run_cli("config", "check", "--config", str(bad), env=cli_env())
    assert res.returncode == 2, res
    assert "(2 problem(s))" in res.stderr
    assert f"leases.lease_ttl: must be > 0 seconds, got -1.0 ({bad}:2)" in res.stderr
    assert "scheduler.only: unknown loop(s) nosuch; known: " in res.stderr
    assert f"({bad}:4)" in res.stderr


def test_limit_rate_error_counts_events(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  smtp: {rate: 0, per: 60, burst: 5}\n")
    res = run_cli("config", "check", "--config", str(bad), env=cli_env())
    assert res.returncode == 2, res
    assert f"limits.smtp.rate: must be > 0, got 0.0 ({bad}:2)" in res.stderr


def test_one_metrics_variable() -> None:
    res = run_cli("run", env=cli_env(LEASECTL_METRICS_LISTEN="127.0.0.1:0"))
    assert res.returncode == 2, res
    assert "LEASECTL_METRICS_LISTEN is not read: set LEASECTL_METRICS__LISTEN" in res.stderr
    assert "Traceback" not in res.stderr


def test_failed_connects_name_their_connection(tmp_path: Path) -> None:
    import pytest

    from leasectl.db import lock_connect
    from leasectl.errors import DatabaseUnavailable
    from leasectl.settings import DatabaseSettings

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2"
    for app, what in (
        ("leasectl/r1/watch", "cannot open the watch connection"),
        ("leasectl/r1/pooler-probe", "cannot open the pooler probe connection"),
        ("leasectl/r1", "cannot open the lock connection"),
        ("leasectl/watch", "cannot open the lock connection"),  # a replica called "watch"
    ):
        with pytest.raises(DatabaseUnavailable, match=what):
            lock_connect(dsn, DatabaseSettings(), app)
