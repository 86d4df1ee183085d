"""Every command fails with one line and an exit code from the table, never a traceback.

Real processes through the real entry point (``python -m leasectl.cli``), against the test
server or deliberately wrong DSNs: database down, an unknown role (authentication fails the
same way a wrong password does), an unknown database, the metrics port in use, a data
directory that cannot be created, bad YAML, a migration file that fails, SIGTERM during
``migrate``, a closed output pipe. Plus the commands that must work without the loops'
secrets, ``config check`` finding what ``run`` refuses, and ``leasectl timing``.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from leasectl.cli import exit_codes
from tests.child_output import LineReader, exit_code, tail
from tests.cli.conftest import cli_env, free_port, write_config
from tests.conftest import REPO, wait_until

DOCS = REPO / "docs" / "operator" / "running-a-cluster.md"


def leasectl(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leasectl.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def assert_clean(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit ``code``, each needle in stderr, no traceback; the cause is on one line."""
    err = res.stderr
    assert res.returncode == code, (res.returncode, res.stdout, err)
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    for needle in needles:
        assert needle in err, (needle, err)
    if code != 1:  # a failure (not a check's finding) is reported as "leasectl <cmd>: ..."
        first = [line for line in err.splitlines() if line.startswith("leasectl ")]
        assert first, err


def with_params(dsn: str, **params: str) -> str:
    values = conninfo.conninfo_to_dict(dsn)
    values.update(params)
    return conninfo.make_conninfo(**values)  # type: ignore[arg-type]


DB_COMMANDS = (
    ("migrate",),
    ("migrate", "--status"),
    ("status",),
    ("step-down", "--lease", "x", "--wait", "0"),
    ("evict", "--lease", "x", "--yes"),
    ("timing",),
    ("run", "--metrics-listen", ""),
)


def test_database_down(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=postgres dbname=x connect_timeout=2"
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    for args in DB_COMMANDS:
        assert_clean(leasectl(*args, env=env), 2, "cannot ", "Connection refused")


def test_unknown_role_and_unknown_database(server_dsn: str, tmp_path: Path) -> None:
    cases = {
        "role": (with_params(server_dsn, user="no_such_role_h9"), 'role "no_such_role_h9"'),
        "db": (with_params(server_dsn, dbname="no_such_db_h9"), 'database "no_such_db_h9"'),
    }
    for dsn, needle in cases.values():
        env = cli_env(write_config(tmp_path / "c.yaml", dsn))
        for args in DB_COMMANDS:
            assert_clean(leasectl(*args, env=env), 2, needle)


def test_metrics_port_in_use(dsn: str, tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = leasectl("run", "--metrics-listen", f"127.0.0.1:{port}", env=env)
    assert_clean(res, 2, "metrics.listen", "--metrics-listen")


def test_a_second_replica_on_the_default_port_serves_on_a_free_one(
    dsn: str, tmp_path: Path
) -> None:
    """The default metrics.listen already taken (by another replica on this host): the replica
    starts anyway, says where it serves instead, and answers there. A chosen port stays an
    error (test_metrics_port_in_use)."""
    import urllib.request

    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", 9464))
            taken.listen()
        except OSError:
            pass  # someone else holds it: in use either way
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "leasectl"), "run", "--replica-id", "second"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stderr is not None
        # Read to the end on a thread: the replica logs on after the line we wait for, and a
        # full pipe would block it (its shutdown after SIGTERM included).
        log = LineReader(proc.stderr)
        try:
            serving = re.compile(r"serving /metrics, /healthz and /readyz on 127\.0\.0\.1:(\d+)")

            def moved(lines: list[str]) -> re.Match[str] | None:
                return next((m for m in map(serving.search, lines) if m), None)

            found = log.wait_for(moved, 60, "the fallback port logged")
            port = int(found.group(1))
            assert port != 9464

            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                        return bool(r.status == 200)
                except OSError:  # 503 while starting (HTTPError is an OSError)
                    return False

            wait_until(healthy, timeout=60, interval=0.2, what="/healthz 200 on the fallback port")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert exit_code(proc, 60, log) == 0, tail(log)


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tmp_path / "c.yaml"
    config.write_text(f"database:\n  data_dir: {blocker}/pgdata\nmetrics:\n  listen: ''\n")
    env = cli_env(config)
    for args in (("migrate",), ("migrate", "--status"), ("status",), ("embedded", "status")):
        assert_clean(leasectl(*args, env=env), 2, "database.data_dir", str(blocker))


def test_bad_yaml_for_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("leases:\n  lease_ttl: [1\n")
    env = cli_env(bad)
    for args in (
        *DB_COMMANDS,
        ("config", "show"),
        ("config", "check"),
        ("config", "explain-timing"),
        ("embedded", "status"),
    ):
        assert_clean(leasectl(*args, env=env), 2, f"invalid configuration in {bad}", "line 3")


def test_failing_migration_file(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_bad.up.sql").write_text("CREATE TABLE h9_kept (id int);\nSELECT nope();\n")
    env = cli_env(
        write_config(tmp_path / "c.yaml", empty_dsn, migrations={"directory": str(folder)})
    )
    assert_clean(leasectl("migrate", env=env), 2, "0001_bad.up.sql:2 failed", "nope()")
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('h9_kept')").fetchone() == (None,)


def test_sigterm_during_migrate_rolls_back(empty_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_slow.up.sql").write_text(
        "CREATE TABLE h9_slow (id int);\nSELECT pg_sleep(60);\n"
    )
    env = cli_env(
        write_config(tmp_path / "c.yaml", empty_dsn, migrations={"directory": str(folder)})
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "leasectl.cli", "migrate"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def sleeping() -> bool:
            with psycopg.connect(empty_dsn, autocommit=True) as c:
                row = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> "
                    "pg_backend_pid()",
                    ("%pg_sleep(60)%",),
                ).fetchone()
            return bool(row and row[0])

        wait_until(sleeping, timeout=30, what="the migration is running")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean(res, 130, "interrupted", "rolled back")
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('h9_slow')").fetchone() == (None,)


def test_closed_output_pipe_is_quiet(dsn: str, tmp_path: Path) -> None:
    """``leasectl migrate --status | head``: the reader went away before we wrote."""
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    for args in (("migrate", "--status"), ("config", "show")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "leasectl.cli", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the command writes anything
        err = proc.stderr.read()
        assert proc.wait(60) == exit_codes.PIPE_CLOSED, err
        assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_exit_code_table_in_the_docs_matches_the_code() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Exit codes") :]
    section = section[: section.index("\n## ", 4)] if "\n## " in section[4:] else section
    codes = {int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", section, re.M)}
    assert codes == set(exit_codes.TABLE), (codes, sorted(exit_codes.TABLE))
    assert "leasectl/cli/exit_codes.py" in section


# -- secrets, config check, env blame -------------------------------------------------------


def _secret_config(path: Path, dsn: str) -> Path:
    return write_config(
        path,
        dsn,
        scheduler={"loops_package": "leasectl.certs"},
        loops={"notifications": {"webhook": {"hmac_key_env": "H9_NOT_SET_KEY"}}},
    )


def test_reading_commands_need_no_loop_secrets(dsn: str, tmp_path: Path) -> None:
    env = cli_env(_secret_config(tmp_path / "c.yaml", dsn))
    show = leasectl("config", "show", env=env)
    assert show.returncode == 0, show.stderr
    assert "<from env H9_NOT_SET_KEY: not set>" in show.stdout
    with psycopg.connect(dsn, autocommit=True) as c:  # a replica of the shipped loops stopped
        c.execute(
            "INSERT INTO leasectl_replicas (id, host, pid, version, stopped_at, declared_leases)"
            " VALUES ('gone', 'h', 1, '0', now(), '{notification_send}')"
        )
    status = leasectl("status", "--json", env=env)
    assert status.returncode == 1, status.stderr  # nothing runs: unheld, but it read the status
    assert '"notification_send"' in status.stdout and "Traceback" not in status.stderr
    for args in (("step-down", "--lease", "notification_send", "--wait", "0"),
                 ("evict", "--lease", "notification_send", "--yes")):  # fmt: skip
        res = leasectl(*args, env=env)
        assert_clean(res, 1, "is not held")
    # The commands that run the loops need it, and say which variable.
    res = leasectl("config", "check", env=env)
    assert_clean(res, 2, "environment variable 'H9_NOT_SET_KEY' is not set")


def test_config_check_refuses_what_run_refuses_all_at_once(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "scheduler:\n  only: [notification_send, no_such_loop]\n"
        "loops:\n  digest:\n    loop:\n      enabled: true\n"
    )
    res = leasectl("config", "check", env=cli_env(config))
    assert_clean(res, 2, f"invalid configuration in {config} (2 problem(s))")
    assert "scheduler.only: unknown loop(s) no_such_loop" in res.stderr
    assert f"({config}:2)" in res.stderr  # scheduler.only's line
    assert "loops.digest is enabled but loops.notifications.smtp.host is empty" in res.stderr
    assert f"({config}:4)" in res.stderr  # loops.digest's line


def test_env_override_error_names_the_variable(tmp_path: Path) -> None:
    env = cli_env(LEASECTL_LEASES__LEASE_TTL="abc")
    res = leasectl("config", "check", env=env)
    assert_clean(res, 2, "environment variable LEASECTL_LEASES__LEASE_TTL")
    assert "packaged default" not in res.stderr


# -- timing ---------------------------------------------------------------------------------


def test_timing_normal_config(dsn: str, tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path / "c.yaml", dsn))
    res = leasectl("timing", env=env)
    assert res.returncode == 0, res.stderr
    assert "D_srv (earliest the server may drop a silent holder): 9s" in res.stdout
    assert "holds: yes" in res.stdout
    as_json = leasectl("timing", "--json", env=env)
    import json

    data = json.loads(as_json.stdout)
    assert data["tcp_source"] == "server" and data["d_srv_s"] == 9.0
    assert data["inequality_holds"] is True
    kinds = {f["kind"]: f["takeover_s"] for f in data["faults"]}
    assert set(kinds) == {"crash", "graceful", "hang", "partition", "wedged tick",
                          "database restart"}  # fmt: skip
    a = 1.0 * 1.2  # acquire_interval x (1 + acquire_jitter), the defaults
    assert kinds["crash"] == pytest.approx(a)
    assert kinds["hang"] == pytest.approx(5 + 2 + 2 * a)
    assert kinds["partition"] == pytest.approx(min(9 + a, 5 + 2 + 2 * a))
    alias = leasectl("config", "explain-timing", "--json", env=env)
    assert alias.returncode == 0 and json.loads(alias.stdout)["d_srv_s"] == 9.0


def test_timing_violated_inequality_exits_1(dsn: str, tmp_path: Path) -> None:
    env = cli_env(write_config(tmp_path / "c.yaml", dsn, leases={"lease_ttl": 8.0}))
    res = leasectl("timing", env=env)
    assert res.returncode == 1, res.stderr
    assert "lease_ttl + safety_margin = 10s <= D_srv = 9s: VIOLATED" in res.stdout
    assert "Traceback" not in res.stderr
    # ... and run refuses to start with the same numbers, exit 2, before campaigning.
    started = time.monotonic()
    run = leasectl("run", "--metrics-listen", "", env=env)
    assert_clean(run, 2, "exceeds D_srv = 9.0s")
    assert time.monotonic() - started < 60


# -- replica ids ----------------------------------------------------------------------------


def test_a_live_replica_id_is_refused_and_a_reused_one_restarts(
    make_cluster: Any, dsn: str
) -> None:
    cluster = make_cluster(1)  # r1 runs and holds every lease
    before = cluster.status()
    (r1,) = [r for r in before["replicas"] if r["id"] == "r1"]
    first = cluster.replicas["r1"]
    dup = cluster.start("r1")  # the same id, another process: refused before campaigning
    assert dup.proc.wait(60) == 2
    log = dup.log.read_text()
    assert "Traceback" not in log
    assert "'r1' is already used by a live replica" in log, log
    # The first one was left alone: still holding, never evicted as hung.
    held = cluster.wait_all_held()
    assert {holder for holder, _ in held.values()} == {"r1"}
    with psycopg.connect(dsn, autocommit=True) as c:
        evicted = c.execute(
            "SELECT count(*) FROM leasectl_lease_events WHERE event = 'evicted'"
        ).fetchone()
    assert evicted == (0,)
    # Stop it, start the id again: a new process, so started_at moves.
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(60) == 0
    cluster.start("r1")

    def restarted() -> bool:
        rows = [r for r in cluster.status()["replicas"] if r["id"] == "r1"]
        return bool(rows) and rows[0]["started_at"] > r1["started_at"] and rows[0]["alive"]

    wait_until(restarted, timeout=30, what="r1 registered again with a new started_at")


def test_systemd_unit_in_the_docs_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds no unknown key (StartLimit* belong to [Unit])."""
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = DOCS.read_text()
    unit = re.search(r"```ini\n(# /etc/systemd/system/leasectl.service\n.*?)```", text, re.S)
    assert unit is not None
    path = tmp_path / "leasectl.service"
    path.write_text(unit.group(1))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    out = res.stdout + res.stderr
    assert "Unknown key" not in out and "Unknown section" not in out, out
