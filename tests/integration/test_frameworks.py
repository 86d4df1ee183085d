"""The framework integrations under real servers: uvicorn workers, gunicorn workers, Django.

The FastAPI and Flask apps are docs/examples/web/, quoted in docs/python-api.md. Each server
runs as its own process tree against the test database; the tests look at what a user would:
the replicas registered, which one ran the leased loop, the HTTP endpoints, and a clean exit
on the server's own shutdown signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.child_output import OutputFile, exit_code, tail
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.slow

WEB = REPO / "docs" / "examples" / "web"


def test_the_docs_quote_the_tested_web_examples() -> None:
    doc = (REPO / "docs" / "python-api.md").read_text()
    for name in ("fastapi_app.py", "flask_app.py", "gunicorn.conf.py"):
        assert (WEB / name).read_text().strip() in doc, f"docs/python-api.md: {name} drifted"
    leader = REPO / "docs" / "examples" / "leader" / "app.py"  # run by test_leader.py
    assert leader.read_text().strip() in doc, "docs/python-api.md: the leader example drifted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(LEASECTL_DSN=dsn, PYTHONPATH=f"{WEB}:{REPO}", **extra)
    return env


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local test server
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _answer(url: str) -> tuple[int, str]:
    """The server's answer, asked until there is one: a single request can go unanswered
    within its 5 s on a loaded machine (status 0), and that says nothing about the server."""
    answer: tuple[int, str] = wait_until(
        lambda: (lambda r: r if r[0] else None)(_get(url)), 30, what=f"an answer from {url}"
    )
    return answer


def _live_replicas(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(
            c.execute("SELECT id, pid FROM leasectl_replicas WHERE stopped_at IS NULL").fetchall()
        )


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(f"SELECT slot, replica, epoch FROM {table} ORDER BY at").fetchall()  # noqa: S608


def _lock_holders(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
        return int(row[0]) if row else 0


def _no_lock_holders(dsn: str, what: str) -> None:
    """No advisory lock left, once the exited processes' backends have gone too: a backend
    ends a moment after its client's connection closes (on a loaded machine, a visible
    moment), and the lock goes with it."""
    wait_until(lambda: _lock_holders(dsn) == 0, 10, interval=0.1, what=what)


def _children(pid: int) -> set[int]:
    try:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return set()
    return {int(x) for x in out.split()}


def _two_workers_one_leader(
    dsn: str, server: subprocess.Popen[bytes], port: int, prefix: str, table: str
) -> set[str]:
    """Both workers are replicas; only one of them writes the leased loop's rows."""
    wait_until(lambda: len(_live_replicas(dsn)) == 2, 90, what="two worker replicas")
    replicas = _live_replicas(dsn)
    workers = _children(server.pid)
    assert set(replicas.values()) <= workers, (replicas, workers)
    _one_writer_once_settled(dsn, table, "stamp", set(replicas))
    code, body = wait_until(
        lambda: (lambda r: r if r[0] == 200 else None)(
            _get(f"http://127.0.0.1:{port}{prefix}/readyz")
        ),
        30,
        what="readyz 200",
    )
    assert "ready" in body
    code, body = _answer(f"http://127.0.0.1:{port}{prefix}/metrics")
    assert code == 200 and "leasectl_lease_held" in body, (code, body[:300])
    return set(replicas)


def _settled_holder(dsn: str, lease: str, replicas: set[str]) -> str | None:
    """``lease``'s holder once it is the replica placement puts it on, with every one of
    ``replicas`` live: from then on nothing moves it by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    res = subprocess.run(
        [sys.executable, "-m", "leasectl.cli", "status", "--json", "--dsn", dsn],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode not in (0, 1):
        return None
    status = json.loads(res.stdout)
    alive = {r["id"] for r in status["replicas"] if r["alive"]}
    held = [
        le["holder"]
        for le in status["leases"]
        if le["name"] == lease and le["state"] == "held" and le["holder"] == le["placed_on"]
    ]
    return str(held[0]) if held and alive >= replicas else None


def _one_writer_once_settled(dsn: str, table: str, lease: str, replicas: set[str]) -> str:
    """Only the leader writes the leased loop's rows. Read once placement has settled: a
    worker that registered late (its start-up is seconds under load) may be the one
    placement prefers, and it gets the lease handed over ``rebalance_after`` later: two
    writers one after the other, which is placement working, not two leaders."""
    holder: str = wait_until(
        lambda: _settled_holder(dsn, lease, replicas),
        60,
        interval=0.5,
        what=f"{lease} held where placement puts it",
    )
    assert holder in replicas, (holder, replicas)
    mark = len(_rows(dsn, table))
    wait_until(lambda: len(_rows(dsn, table)) >= mark + 3, 60, what="three leased rows")
    writers = {r[1] for r in _rows(dsn, table)[mark:]}
    assert writers == {holder}, (writers, holder, replicas)
    return holder


def _clean_exit(
    dsn: str, server: subprocess.Popen[bytes], log: OutputFile, sig: int, ids: set[str]
) -> None:
    server.send_signal(sig)
    assert exit_code(server, 60, log) == 0, tail(log)
    out = log.text()
    with psycopg.connect(dsn, autocommit=True) as c:
        stopped: dict[str, bool] = dict(
            c.execute(
                "SELECT id, stopped_at IS NOT NULL FROM leasectl_replicas WHERE id = ANY(%s)",
                (list(ids),),
            ).fetchall()
        )
    assert stopped == dict.fromkeys(ids, True), stopped
    _no_lock_holders(dsn, "a lease or liveness lock outlived the server")
    assert "Traceback" not in out, out[-3000:]


def test_uvicorn_two_workers_are_two_replicas_one_leads(dsn: str, tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    port = _free_port()
    log = OutputFile(tmp_path / "uvicorn.log")
    server = log.popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_app:api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=_env(dsn),
        cwd=REPO,
    )
    try:
        ids = _two_workers_one_leader(dsn, server, port, "/leasectl", "stamps")
        code, body = _answer(f"http://127.0.0.1:{port}/whoami")
        assert code == 200 and json.loads(body)["replica"] in ids, body
        _clean_exit(dsn, server, log, signal.SIGTERM, ids)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-worker", "preload"])
def test_gunicorn_sync_workers_flask_two_replicas_one_leads(
    dsn: str, preload: bool, tmp_path: Path
) -> None:
    """With ``--preload`` the master imports the app (declaring an App touches nothing) and
    forks; each worker starts its own App after the fork either way."""
    pytest.importorskip("gunicorn")
    port = _free_port()
    log = OutputFile(tmp_path / "gunicorn.log")
    server = log.popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(WEB / "gunicorn.conf.py"),
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port}",
            *(["--preload"] if preload else []),
            "flask_app:web",
        ],
        env=_env(dsn),
        cwd=REPO,
    )
    try:
        ids = _two_workers_one_leader(dsn, server, port, "/leasectl", "stamps")
        code, body = _answer(f"http://127.0.0.1:{port}/whoami")
        assert code == 200 and json.loads(body)["replica"] in ids, body
        _clean_exit(dsn, server, log, signal.SIGTERM, ids)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


_MANAGE = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

_SETTINGS = """\
SECRET_KEY = "test-only"
USE_TZ = True
INSTALLED_APPS = ["leasectl.integrations.django"]
DATABASES = {{"default": {database!r}}}
SITE_NAME = "django-site"
{leasectl}
"""

_JOBS = """\
from django.conf import settings

from leasectl import App, TickContext

app = App()


@app.loop(every=1, leased=True, jitter=0.0)
def stamp(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute(
            "INSERT INTO django_rows (slot, replica, epoch, site) VALUES (%s, %s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch, settings.SITE_NAME),
        )
"""


def _django_project(root: Any, dsn: str, leasectl: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.get("dbname"),
        "USER": parts.get("user", ""),
        "PASSWORD": parts.get("password", ""),
        "HOST": parts.get("host", ""),
        "PORT": str(parts.get("port", "")),
    }
    (root / "proj").mkdir()
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "settings.py").write_text(
        _SETTINGS.format(database=database, leasectl=leasectl)
    )
    (root / "manage.py").write_text(_MANAGE)
    (root / "jobs.py").write_text(_JOBS)


def test_django_manage_leasectl_run_reads_django_settings(dsn: str, tmp_path: Any) -> None:
    pytest.importorskip("django")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "CREATE TABLE django_rows (slot timestamptz, replica text, epoch bigint, site text,"
            " at timestamptz DEFAULT now())"
        )
    # No DSN in LEASECTL: the App uses DATABASES["default"].
    _django_project(tmp_path, dsn, 'LEASECTL = {"APP": "jobs:app", "METRICS_LISTEN": ""}')
    env = _env(dsn)
    del env["LEASECTL_DSN"]
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    check = subprocess.run(
        [sys.executable, "manage.py", "leasectl", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "loop stamp: leased, every 1s" in check.stdout, check
    logs = [OutputFile(tmp_path / f"django-{i}.log") for i in range(2)]
    replicas = [
        log.popen([sys.executable, "manage.py", "leasectl", "run"], env=env, cwd=tmp_path)
        for log in logs
    ]
    try:
        wait_until(lambda: len(_live_replicas(dsn)) == 2, 90, what="two Django replicas")
        ids = set(_live_replicas(dsn))
        assert set(_live_replicas(dsn).values()) == {p.pid for p in replicas}
        _one_writer_once_settled(dsn, "django_rows", "stamp", ids)
        with psycopg.connect(dsn, autocommit=True) as c:
            sites = c.execute("SELECT DISTINCT site FROM django_rows").fetchall()
        assert sites == [("django-site",)], sites
        for p in replicas:
            p.send_signal(signal.SIGTERM)
        for p, log in zip(replicas, logs, strict=True):
            assert exit_code(p, 60, log) == 0, tail(log)
        _no_lock_holders(dsn, "a lease or liveness lock outlived the replicas")
    finally:
        for p in replicas:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_django_missing_settings_is_one_clear_error(dsn: str, tmp_path: Any) -> None:
    pytest.importorskip("django")
    _django_project(tmp_path, dsn, 'LEASECTL = {"APP": "jobs:app", "DNS": "typo"}')
    env = _env(dsn)
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    out = subprocess.run(
        [sys.executable, "manage.py", "leasectl", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "settings.LEASECTL: unknown key(s) DNS" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
