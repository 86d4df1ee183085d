"""``leasectl status`` exit codes and ``leasectl config`` errors, without a running cluster."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from leasectl.keys import int4_hash
from tests.child_output import LineReader, exit_code, tail
from tests.cli.conftest import cli_env, free_port, run_cli, write_config


def test_status_not_migrated_exits_2_with_reason(empty_dsn: str, tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path / "c.yaml", empty_dsn))
    res = run_cli("status", env=env)
    assert res.returncode == 2
    assert "not migrated" in res.stderr and "leasectl migrate" in res.stderr


def test_status_cannot_connect_exits_2(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x connect_timeout=2"
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    res = run_cli("status", "--json", env=env)
    assert res.returncode == 2
    assert "cannot connect" in res.stderr


def test_status_unheld_and_stale_exit_1(dsn: str, tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    res = run_cli("status", "--json", env=env)
    assert res.returncode == 0  # no replica ever declared a lease, none recorded
    assert json.loads(res.stdout)["leases"] == []
    # A replica whose App runs alpha and beta stopped a moment ago: the cluster expects them.
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO leasectl_replicas (id, host, pid, version, stopped_at, declared_leases)"
            " VALUES ('gone', 'h', 1, '0', now(), '{alpha,beta}')"
        )
    res = run_cli("status", "--json", env=env)
    assert res.returncode == 1  # alpha and beta declared, never acquired
    data = json.loads(res.stdout)
    assert {le["name"]: le["state"] for le in data["leases"]} == {"alpha": "free", "beta": "free"}
    assert [r["id"] for r in data["replicas"]] == ["gone"]

    # A holder that stopped renewing 30s ago: its lock is still there, the lease is stale.
    with psycopg.connect(dsn, autocommit=True, application_name="leasectl/hung") as holder:
        for name in ("alpha", "beta"):
            holder.execute(
                "SELECT pg_advisory_lock(%s, %s)", (int4_hash("leasectl"), int4_hash(name))
            )
            holder.execute(
                "INSERT INTO leasectl_leases (name, key, epoch, holder, holder_backend_pid, "
                "acquired_at, renewed_at) VALUES (%s, %s, 7, 'hung', pg_backend_pid(), "
                "now() - interval '60 s', now() - interval '30 s')",
                (name, int4_hash(name)),
            )
        res = run_cli("status", "--json", env=env)
        assert res.returncode == 1
        leases = {le["name"]: le for le in json.loads(res.stdout)["leases"]}
        assert leases["alpha"]["state"] == "stale" and leases["alpha"]["holder"] == "hung"
        assert leases["alpha"]["epoch"] == 7 and 29 < leases["alpha"]["renewed_age_s"] < 60
        # stale for ~25s (30s since renewal - 5s lease_ttl): tolerated by --max-unheld 60
        assert run_cli("status", "--max-unheld", "60", env=env).returncode == 0
        table = run_cli("status", env=env)
        assert (
            table.returncode == 1
            and "stale" in table.stdout
            and "has not renewed" in (table.stdout)
        )


def test_config_errors_reported_together(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "leases:\n  lease_ttl: 1\n  heartbeat_interval: 2\n  eviction_gracе: 3\n"
        "loops:\n  notifications:\n    smtp:\n      port: -1\n"
        "databse:\n  dsn: x\n"
    )
    for args in (("config", "check"), ("run",), ("status",)):
        res = run_cli(*args, "--config", str(bad), env=cli_env())
        assert res.returncode == 2, (args, res.stderr)
        err = res.stderr
        assert f"invalid configuration in {bad} (4 problem(s))" in err, err
        assert "leases.eviction_gracе: unknown key" in err
        assert "did you mean 'eviction_grace'?" in err
        assert "loops.notifications.smtp.port: must be >= 1, got -1" in err
        assert "databse: unknown key 'databse'; did you mean 'database'?" in err
        assert "leases.heartbeat_interval: must be < leases.lease_ttl (1), got 2" in err
        assert f"between two heartbeats ({bad}:3)" in err


def test_config_show_redacts_secrets(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac"
    key_file.write_text("file-secret\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "database:\n  dsn: postgresql://app:pw-inline@db.example/app\n"
        "loops:\n  notifications:\n"
        f"    webhook:\n      url: https://hooks.example/x\n      hmac_key_file: {key_file}\n"
        "    smtp:\n      password_env: SMTP_PW\n"
    )
    res = run_cli("config", "show", env=cli_env(cfg, SMTP_PW="env-secret"))
    assert res.returncode == 0, res.stderr
    for secret in ("pw-inline", "file-secret", "env-secret"):
        assert secret not in res.stdout
    assert "password=***" in res.stdout and "hmac_key: <redacted>" in res.stdout
    assert "url: https://hooks.example/x" in res.stdout
    env_override = run_cli(
        "config", "show", env=cli_env(cfg, SMTP_PW="x", LEASECTL_LEASES__LEASE_TTL="4.5")
    )
    assert "lease_ttl: 4.5" in env_override.stdout


def test_status_watch_refreshes_until_interrupted(dsn: str, tmp_path: Path) -> None:
    import signal
    import subprocess

    from tests.cli.conftest import LEASECTL
    from tests.conftest import REPO

    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    with psycopg.connect(dsn, autocommit=True) as c:  # a replica that ran alpha and beta
        c.execute(
            "INSERT INTO leasectl_replicas (id, host, pid, version, stopped_at, declared_leases)"
            " VALUES ('gone', 'h', 1, '0', now(), '{alpha,beta}')"
        )
    proc = subprocess.Popen(
        [LEASECTL, "status", "--watch", "--json", "--interval", "0.2"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # Read on a thread, waited on with a deadline: it refreshes until SIGINT (its output
        # must keep flowing), and a bare readline() waits for ever on a child that is silent.
        out = LineReader(proc.stdout)
        first, second = out.wait_for(two_refreshes, 60, "two refreshes")
        assert json.loads(first)["leases"][0]["state"] == "free"
        assert json.loads(second)["taken_at"] > json.loads(first)["taken_at"]
        proc.send_signal(signal.SIGINT)
        assert exit_code(proc, 30, out) == 1, tail(out)  # the last refresh saw unheld leases
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def two_refreshes(lines: list[str]) -> list[str] | None:
    """The first two JSON documents of ``status --watch --json``, one a line."""
    docs = [line for line in lines if line.startswith("{")]
    return docs[:2] if len(docs) >= 2 else None
