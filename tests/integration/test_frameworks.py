"""The framework integrations under real servers: uvicorn workers, gunicorn workers, Django.

Each server runs as its own process tree against the test database; the tests look at what a
user would: the replicas registered, which one ran the leased loop, the HTTP endpoints, and
a clean exit on the server's own shutdown signal.
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
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(LEASECTL_DSN=dsn, PYTHONPATH=str(REPO), **extra)
    return env


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local test server
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


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


def _children(pid: int) -> set[int]:
    try:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return set()
    return {int(x) for x in out.split()}


def _two_workers_one_leader(
    dsn: str, server: subprocess.Popen[str], port: int, prefix: str, table: str
) -> set[str]:
    """Both workers are replicas; only one of them writes the leased loop's rows."""
    wait_until(lambda: len(_live_replicas(dsn)) == 2, 90, what="two worker replicas")
    replicas = _live_replicas(dsn)
    workers = _children(server.pid)
    assert set(replicas.values()) <= workers, (replicas, workers)
    wait_until(lambda: len(_rows(dsn, table)) >= 3, 60, what="three leased rows")
    writers = {r[1] for r in _rows(dsn, table)}
    assert len(writers) == 1 and writers <= set(replicas), (writers, replicas)
    code, body = _get(f"http://127.0.0.1:{port}{prefix}/metrics")
    assert code == 200 and "leasectl_lease_held" in body, (code, body[:300])
    code, body = wait_until(
        lambda: (lambda r: r if r[0] == 200 else None)(
            _get(f"http://127.0.0.1:{port}{prefix}/readyz")
        ),
        30,
        what="readyz 200",
    )
    assert "ready" in body
    return set(replicas)


def _clean_exit(dsn: str, server: subprocess.Popen[str], sig: int, ids: set[str]) -> None:
    server.send_signal(sig)
    out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out[-3000:]
    with psycopg.connect(dsn, autocommit=True) as c:
        stopped = dict(
            c.execute(
                "SELECT id, stopped_at IS NOT NULL FROM leasectl_replicas WHERE id = ANY(%s)",
                (list(ids),),
            ).fetchall()
        )
    assert stopped == dict.fromkeys(ids, True), stopped
    assert _lock_holders(dsn) == 0, "a lease or liveness lock outlived the server"
    assert "Traceback" not in out, out[-3000:]


def test_uvicorn_two_workers_are_two_replicas_one_leads(dsn: str) -> None:
    pytest.importorskip("uvicorn")
    from tests.apps.asgi_app import CREATE

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(CREATE)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.apps.asgi_app:api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=_env(dsn),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ids = _two_workers_one_leader(dsn, server, port, "/leasectl", "web_rows")
        code, body = _get(f"http://127.0.0.1:{port}/whoami")
        assert code == 200 and json.loads(body)["replica"] in ids, body
        _clean_exit(dsn, server, signal.SIGTERM, ids)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_gunicorn_sync_workers_flask_two_replicas_one_leads(dsn: str) -> None:
    pytest.importorskip("gunicorn")
    from tests.apps.wsgi_app import CREATE

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(CREATE)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(REPO / "tests" / "apps" / "gunicorn_conf.py"),
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port}",
            "tests.apps.wsgi_app:web",
        ],
        env=_env(dsn),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ids = _two_workers_one_leader(dsn, server, port, "/leasectl", "wsgi_rows")
        code, body = _get(f"http://127.0.0.1:{port}/whoami")
        assert code == 200 and json.loads(body)["replica"] in ids, body
        _clean_exit(dsn, server, signal.SIGTERM, ids)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
