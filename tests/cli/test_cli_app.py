"""The front ends serve the App (issue 19): ``--app`` / ``LEASECTL_APP`` on ``timing``,
``config show|check`` and ``migrate``, which then describe that App's loops and apply its
migrations, not the shipped certificate loops'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from tests.cli.conftest import LEASECTL, cli_env
from tests.conftest import REPO

APP = """
from pathlib import Path

from leasectl import App

app = App(migrations=[("myapp", Path(__file__).with_name("migrations"))])


@app.loop(every=30, leased=True, timeout=20)
def report(ctx):
    pass


@app.loop(every=5, leased=False)
def ping(ctx):
    pass
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_reports.up.sql").write_text("CREATE TABLE reports (x int);")
    return tmp_path


def _run(project: Path, *args: str, **env: str) -> tuple[int, str, str]:
    res = subprocess.run(
        [LEASECTL, *args],
        env=cli_env(**env),
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stdout, res.stderr


def test_config_show_and_check_describe_the_app(tmp_path: Path) -> None:
    project = _project(tmp_path)
    code, out, _ = _run(project, "config", "show", "--app", "myapp:app")
    assert code == 0
    shown = yaml.safe_load(out)
    assert "loops" not in shown and "leases" in shown  # no certificate settings
    assert len(out.splitlines()) < 80
    code, out, _ = _run(project, "config", "show")  # bare: the shipped loops, as bare run
    assert code == 0 and "notifications" in yaml.safe_load(out)["loops"]

    code, out, _ = _run(project, "config", "check", LEASECTL_APP="myapp:app")
    assert code == 0 and "2 loops enabled (1 leased)" in out, out
    code, _, err = _run(
        project, "config", "check", "--app", "myapp:app", LEASECTL_SCHEDULER__ONLY="[nope]"
    )
    assert code == 2
    assert "scheduler.only: unknown loop(s) nope; known: ping, report" in err
    assert "environment variable LEASECTL_SCHEDULER__ONLY" in err


def test_timing_reports_the_apps_leased_loops(tmp_path: Path) -> None:
    project = _project(tmp_path)
    code, out, _ = _run(project, "timing", "--offline", "--json", "--app", "myapp:app")
    assert code == 0
    timing = json.loads(out)
    assert set(timing["wedged"]) == {"report"}  # timeout 20 + wedge_grace + crash takeover
    assert timing["wedged"]["report"] > 20
    code, out, _ = _run(project, "timing", "--offline", "--json")
    assert code == 0 and "crl_generation" in json.loads(out)["wedged"]
    # An App without the certificate loops never imports them, not even their settings.
    for args in (("timing", "--offline"), ("config", "check"), ("config", "show")):
        res = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "leasectl.cli", *args, "--app", "myapp:app"],
            env=cli_env(PYTHONPATH=f"{REPO}:{project}"),
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        imported = [line for line in res.stderr.splitlines() if line.startswith("import time:")]
        assert imported and not [line for line in imported if "leasectl.certs" in line], args


def test_migrate_applies_the_apps_folders_and_no_certificate_schema(
    empty_dsn: str, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    code, out, err = _run(project, "migrate", "--app", "myapp:app", LEASECTL_DSN=empty_dsn)
    assert code == 0, err
    assert "myapp:0001_reports" in out and "leasectl_certs" not in out
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        schemas = c.execute(
            "SELECT to_regnamespace('leasectl_certs'), to_regclass('reports')::text"
        ).fetchone()
    assert schemas == (None, "reports")
    status = ("migrate", "--status", "--app", "myapp:app")
    code, out, _ = _run(project, *status, LEASECTL_DSN=empty_dsn)
    assert code == 0 and "applied  myapp:0001_reports" in out
    assert "pending" not in out
