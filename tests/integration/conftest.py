"""Fixtures for multi-process lease tests: replica processes and the truth from pg_locks."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from leasectl.keys import as_oid, int4_hash, namespace_for
from tests.child_output import OutputFile
from tests.conftest import wait_until
from tests.replica_proc import FENCE_LOG_DDL, ReplicaProcess

HOLDERS_SQL = """
SELECT l.objid::bigint, l.pid, a.application_name
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %(ns)s::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
def fence_dsn(dsn: str) -> str:
    """A migrated database with the ``fence_log`` table the replica processes write to."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(FENCE_LOG_DDL)
    return dsn


@pytest.fixture
def spawn(fence_dsn: str) -> Iterator[Callable[..., ReplicaProcess]]:
    """Start replica processes on ``fence_dsn``; every one is killed at the end of the test."""
    started: list[ReplicaProcess] = []

    def start(replica_id: str, leases: list[str], **kwargs: Any) -> ReplicaProcess:
        proc = ReplicaProcess(fence_dsn, replica_id, leases, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def lock_holders(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, list[str]]:
    """For each lease name, the application_names of the backends holding its lock."""
    by_oid = {as_oid(int4_hash(n)): n for n in names}
    out: dict[str, list[str]] = {n: [] for n in names}
    for objid, _pid, app in conn.execute(
        HOLDERS_SQL, {"ns": as_oid(namespace_for("leasectl"))}
    ).fetchall():
        if objid in by_oid:
            out[by_oid[objid]].append(app)
    return out


def db_epochs(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(conn.execute("SELECT name, epoch FROM leasectl_leases").fetchall())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(dsn: str) -> Iterator[dict[str, str]]:
    """A real PgBouncer in front of ``dsn``: ``{"transaction": dsn, "session": dsn}``.

    Two database aliases on one PgBouncer, one per pool mode. PgBouncer refuses to run as
    root, so it runs as the embedded server's system user (or ``nobody``).
    """
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        pytest.skip("pgbouncer binary not found (apt-get install pgbouncer; .ci/run does)")
    target = conninfo.conninfo_to_dict(dsn)
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="leasectl-pgbouncer-"))
    workdir.chmod(0o755)
    user = None
    if os.geteuid() == 0:
        for candidate in ("embedded_postgres", "nobody"):
            try:
                user = pwd.getpwnam(candidate)
                break
            except KeyError:
                continue
    (workdir / "userlist.txt").write_text(f'"{target.get("user", "postgres")}" ""\n')
    backend = f"host={target['host']} port={target['port']} dbname={target['dbname']}"
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"txn = {backend} pool_mode=transaction\n"
        f"sess = {backend} pool_mode=session\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
        f"pidfile = {workdir / 'pgbouncer.pid'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 5\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    if user is not None:
        for f in workdir.iterdir():
            os.chown(f, user.pw_uid, user.pw_gid)
        os.chown(workdir, user.pw_uid, user.pw_gid)
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid}
    # Its output to a file, not a pipe: PgBouncer logs every connection to stderr as well as
    # to its logfile, and a full pipe nobody reads would stall the pooler mid-test.
    output = OutputFile(workdir / "pgbouncer.out")
    proc = output.popen([binary, str(workdir / "pgbouncer.ini")], cwd=workdir, **kwargs)
    front_base = f"host=127.0.0.1 port={port} user={target.get('user', 'postgres')}"
    front = {"transaction": front_base + " dbname=txn", "session": front_base + " dbname=sess"}

    def up() -> bool:
        if proc.poll() is not None:
            log = (
                (workdir / "pgbouncer.log").read_text()
                if (workdir / "pgbouncer.log").exists()
                else ""
            )
            raise AssertionError(
                f"pgbouncer exited {proc.returncode}: {log[-2000:]}{output.text()[-2000:]}"
            )
        try:
            with psycopg.connect(front["session"], connect_timeout=1) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(up, 15, interval=0.05, what="pgbouncer accepts connections")
        yield front
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def standby_dsn(dsn: str) -> Iterator[str]:
    """A hot standby of the embedded test server (pg_basebackup -R), on its own port."""
    if os.environ.get("LEASECTL_TEST_DSN"):
        pytest.skip("the standby is built from the embedded test server only")
    from leasectl.embedded import SYSTEM_USER, bin_dir

    target = conninfo.conninfo_to_dict(dsn)
    workdir = Path(tempfile.mkdtemp(prefix="leasectl-standby-"))
    workdir.chmod(0o755)
    data = workdir / "data"
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        user = pwd.getpwnam(SYSTEM_USER)
        os.chown(workdir, user.pw_uid, user.pw_gid)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid}
    port = _free_port()

    def run(*args: str) -> None:
        proc = subprocess.run(
            [str(bin_dir() / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=workdir,
            timeout=120,
            check=False,
            **kwargs,
        )
        assert proc.returncode == 0, f"{args[0]} failed: {proc.stdout}\n{proc.stderr}"

    run(
        "pg_basebackup",
        "-h",
        str(target["host"]),
        "-p",
        str(target["port"]),
        "-U",
        str(target.get("user", "postgres")),
        "-D",
        str(data),
        "-R",
        "-X",
        "stream",
        "--no-sync",
        "--checkpoint=fast",  # the default spread checkpoint takes minutes
    )
    try:
        run(
            "pg_ctl",
            "-D",
            str(data),
            "-w",
            "-t",
            "60",
            "-l",
            str(workdir / "standby.log"),
            "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1",
            "start",
        )
        params = dict(target)
        params["port"] = str(port)
        yield conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        subprocess.run(
            [str(bin_dir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            cwd=workdir,
            timeout=60,
            check=False,
            **kwargs,
        )
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement on a fresh autocommit connection (test-side reads)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(sql, params).fetchall()  # type: ignore[arg-type]
