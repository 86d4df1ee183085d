"""The Python API (``leasectl.App``) as a user meets it: the README's example, run for real.

The example file is the README's "Use it from Python" section, byte for byte; these tests
run it as separate processes against the test server, kill the holder, and check the rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl import App, FencingRejected, TickContext
from leasectl.leases import Lease
from tests.child_output import OutputFile, exit_code, tail
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "docs" / "examples" / "report" / "app.py"


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(
        LEASECTL_DSN=dsn,
        LEASECTL_METRICS__LISTEN="",  # two replicas on one host: no shared port
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def test_readme_example_is_the_tested_file() -> None:
    readme = (REPO / "README.md").read_text()
    assert EXAMPLE.read_text().strip() in readme, "README's Python example drifted from the file"


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT to_regclass('reports')").fetchone() == (None,):
            return []
        return c.execute("SELECT slot, replica, epoch FROM reports ORDER BY slot, at").fetchall()


def _replica_pids(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(c.execute("SELECT id, pid FROM leasectl_replicas").fetchall())


def test_example_two_processes_one_row_per_slot_epochs_increase(
    dsn: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = _env(dsn, REPORT_EVERY="1")
    logs = [OutputFile(tmp_path / f"example-{i}.log") for i in range(2)]
    for log in logs:
        procs.append(log.popen([sys.executable, str(EXAMPLE)], env=env))
    wait_until(lambda: len(_rows(dsn)) >= 3, timeout=60, what="three report rows")
    first_holder = _rows(dsn)[-1][1]
    pid = _replica_pids(dsn)[first_holder]
    victim = next(p for p in procs if p.pid == pid)
    before_kill = len(_rows(dsn))
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_epochs = {r[2] for r in _rows(dsn) if r[1] == first_holder}

    def survivor_rows() -> list[tuple[Any, ...]]:
        return [r for r in _rows(dsn)[before_kill:] if r[1] != first_holder]

    wait_until(lambda: len(survivor_rows()) >= 2, timeout=60, what="the survivor's rows")
    rows = _rows(dsn)
    slots = [r[0] for r in rows]
    assert len(slots) == len(set(slots)), f"a slot was written twice: {rows}"
    epochs = [r[2] for r in rows]
    assert epochs == sorted(epochs), f"epochs went backwards along the slots: {rows}"
    survivor_epochs = {r[2] for r in survivor_rows()}
    assert min(survivor_epochs) > max(killed_epochs), (killed_epochs, survivor_epochs)

    # A write under the superseded epoch, through ctx.transaction(), is refused and rolled back.
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        stale = Lease("report", max(killed_epochs), time.monotonic() + 60, time.monotonic)
        ctx = TickContext(
            loop="report",
            replica_id="zombie",
            pool=pool,
            config=None,
            tick_at=rows[-1][0],
            deadline=time.monotonic() + 60,
            lease=stale,
        )
        with pytest.raises(FencingRejected), ctx.transaction() as cur:
            cur.execute(
                "INSERT INTO reports (slot, replica, epoch) VALUES (now(), 'zombie', %s)",
                (stale.epoch,),
            )
    assert not [r for r in _rows(dsn) if r[1] == "zombie"]

    survivor, log = next((p, log) for p, log in zip(procs, logs, strict=True) if p is not victim)
    survivor.send_signal(signal.SIGTERM)
    assert exit_code(survivor, 60, log) == 0, tail(log)


_MIGRATOR = """
import sys
from leasectl import App
app = App(dsn=sys.argv[1], migrations=[sys.argv[2]])
app.configure(metrics_listen="")
app.start()
app.stop()
"""


def test_user_migrations_applied_once_by_concurrent_apps(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "billing" / "migrations"
    folder.mkdir(parents=True)
    (folder / "0001_invoices.up.sql").write_text(
        "CREATE TABLE invoices (id bigint PRIMARY KEY);\nSELECT pg_sleep(0.5);\n"
    )
    # Same number as a leasectl migration: a separate namespace, so no collision.
    (folder / "0002_invoice_lines.up.sql").write_text("CREATE TABLE invoice_lines (id bigint);\n")
    env = _env(dsn)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATOR, dsn, str(folder)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    for p in runs:
        out = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 0, out
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(
            "SELECT version, source FROM leasectl_schema_migrations"
            " WHERE source NOT LIKE 'leasectl%' ORDER BY version"
        ).fetchall()
        own = c.execute(
            "SELECT count(*) FROM leasectl_schema_migrations WHERE source = 'leasectl'"
        ).fetchone()
    assert rows == [
        ("billing/migrations:0001_invoices", "billing/migrations"),
        ("billing/migrations:0002_invoice_lines", "billing/migrations"),
    ]
    assert own is not None and own[0] >= 6


def test_app_refuses_duplicate_and_bad_declarations() -> None:
    app = App(dsn="dbname=unused")

    @app.loop(every=5)
    def twice(ctx: TickContext) -> None:
        """first"""

    from leasectl import ConfigError

    with pytest.raises(ConfigError, match="declared twice"):
        app.loop(every=5, name="twice")(lambda ctx: None)
    with pytest.raises(ConfigError, match="every must be > 0"):
        app.loop(every=0)(lambda ctx: None)
    spec = app.loops()[0]
    assert (spec.name, spec.placement, spec.interval, spec.description) == (
        "twice",
        "leased",
        5.0,
        "first",
    )


def _leasectl(
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


def test_run_app_with_included_loops_only_and_no_leased(
    dsn: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = _env(dsn, LEASECTL_APP="tests.apps.mixed:app")
    leader_log, web_log = OutputFile(tmp_path / "leader.log"), OutputFile(tmp_path / "web.log")
    leader = leader_log.popen(
        [
            sys.executable,
            "-m",
            "leasectl.cli",
            "run",
            "--only",
            "user_leased,user_everywhere,notification_send,session_gc",
        ],
        env=env,
        cwd=REPO,
    )
    procs.append(leader)
    web = web_log.popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--no-leased"], env=env, cwd=REPO
    )
    procs.append(web)

    def replica_loops() -> dict[str, list[str]]:
        with psycopg.connect(dsn, autocommit=True) as c:
            rows = c.execute(
                "SELECT pid, loops FROM leasectl_replicas WHERE stopped_at IS NULL"
            ).fetchall()
        return {str(pid): sorted(loops) for pid, loops in rows}

    loops = wait_until(lambda: len(replica_loops()) == 2 and replica_loops(), timeout=60)
    # --only applies to the App's own loops and the included package's alike (the built-in
    # ledger_retention runs on every replica whatever --only says).
    assert loops[str(leader.pid)] == [
        "ledger_retention",
        "notification_send",
        "session_gc",
        "user_everywhere",
        "user_leased",
    ]
    # --no-leased drops leased loops of both kinds: only everywhere loops remain.
    web_loops = loops[str(web.pid)]
    assert "user_everywhere" in web_loops and "session_gc" in web_loops
    assert not {"user_leased", "notification_send", "notification_retry", "crl_generation"} & set(
        web_loops
    )

    def held() -> set[str]:
        with psycopg.connect(dsn, autocommit=True) as c:
            return {
                r[0]
                for r in c.execute(
                    "SELECT name FROM leasectl_leases WHERE holder IS NOT NULL "
                    "AND released_at IS NULL"
                ).fetchall()
            }

    wait_until(lambda: {"user_leased", "notification_send"} <= held(), timeout=60, what="both held")
    # status checks the App's leased loops after scheduler.only (the leader's --only).
    only = "[user_leased, user_everywhere, notification_send, session_gc]"
    status = _leasectl("status", "--json", env={**env, "LEASECTL_SCHEDULER__ONLY": only})
    assert status.returncode == 0, status.stdout + status.stderr
    names = {lease["name"] for lease in json.loads(status.stdout)["leases"]}
    assert {"user_leased", "notification_send"} <= names
    for p in (leader, web):
        p.send_signal(signal.SIGTERM)
    for p, log in ((leader, leader_log), (web, web_log)):
        assert exit_code(p, 60, log) == 0, tail(log)


def test_status_without_app_judges_the_leases_the_cluster_declares(
    empty_dsn: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A database used only by the example App: plain ``leasectl status`` (no --app, no
    config naming the App) expects the App's lease, not the shipped loops'."""
    env = _env(empty_dsn, REPORT_EVERY="3600")
    procs.append(subprocess.Popen([sys.executable, str(EXAMPLE)], env=env))
    status_env = {k: v for k, v in env.items() if k != "LEASECTL_METRICS__LISTEN"}

    def green() -> Any:
        res = _leasectl("status", "--json", "--max-unheld", "60", env=status_env)
        return res if res.returncode == 0 and json.loads(res.stdout)["leases"] else None

    res = wait_until(green, timeout=60, interval=0.5, what="status green with the App's lease")
    leases = {le["name"]: le for le in json.loads(res.stdout)["leases"]}
    assert set(leases) == {"report"} and leases["report"]["state"] == "held"
    assert leases["report"]["expected"] is True
    table = _leasectl("status", env=status_env)
    assert table.returncode == 0 and "the live and recent replicas" in table.stdout, table.stdout
    assert "notification_send" not in table.stdout

    procs[0].send_signal(signal.SIGTERM)
    assert procs[0].wait(60) == 0
    # Stopped a moment ago: the App's lease is still expected, and free.
    res = _leasectl("status", "--json", env=status_env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert [(le["name"], le["state"]) for le in json.loads(res.stdout)["leases"]] == [
        ("report", "free")
    ]
