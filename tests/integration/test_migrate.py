"""The migration runner against a real PostgreSQL: concurrency, failures, checksums, the lock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl.certs.registry import MIGRATIONS as CERTS_MIGRATIONS
from leasectl.errors import ChecksumMismatch, MigrationFailed, MigrationLocked
from leasectl.keys import MIGRATIONS_LEASE
from leasectl.migrate import discover, migrate, migration_status
from leasectl.settings import CoreSettings, MigrationSettings
from tests.child_output import OutputFile
from tests.conftest import REPO, wait_until
from tests.integration.conftest import lock_holders


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def _ledger(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT version FROM leasectl_schema_migrations ORDER BY 1")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _finished(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Exit code, stdout and stderr. communicate() reads both pipes while it waits: wait()
    first would leave a migrator that printed a lot blocked on a full pipe, holding the
    migration lock the others wait for."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
def test_eight_concurrent_migrators_apply_each_version_once(empty_dsn: str, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "leasectl.cli", "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=_env(),
        )
        for _ in range(8)
    ]
    results = [_finished(p, 120) for p in procs]
    assert [r[0] for r in results] == [0] * 8, results
    applied_by_proc: list[str] = []
    for _, out, _ in results:
        m = re.search(r"applied (\d+) migration\(s\)(?:: (.*))?", out)
        assert m, out
        if m[2]:
            applied_by_proc += [v.strip() for v in m[2].split(",")]
    # Bare `migrate` prepares the database for bare `run`: leasectl's and the certificate loops'.
    versions = [mig.key for mig in discover()]
    versions += [mig.key for mig in discover(CERTS_MIGRATIONS.path, CERTS_MIGRATIONS.name)]
    # Every version applied by exactly one of the eight processes...
    assert sorted(applied_by_proc) == sorted(versions), applied_by_proc
    with psycopg.connect(empty_dsn) as conn:
        # ...and recorded exactly once.
        assert _ledger(conn) == sorted(versions)
        assert conn.execute("SELECT count(*) FROM leasectl_schema_migrations").fetchone() == (
            len(versions),
        )


def test_failed_migration_names_file_line_and_message_and_keeps_nothing(
    empty_dsn: str, tmp_path: Path
) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_base.up.sql": "CREATE TABLE base (id int PRIMARY KEY);\n",
            "0002_broken.up.sql": (
                "-- a file that fails halfway\n"
                "CREATE TABLE half (id int);\n"
                "INSERT INTO base VALUES (1);\n"
                "\n"
                "INSERT INTO base\n"
                "VALUES (1);\n"  # the statement of line 5: duplicate key, no error position
                "CREATE TABLE never (id int);\n"
            ),
        },
    )
    with pytest.raises(MigrationFailed) as info:
        migrate(empty_dsn, directory=d)
    err = info.value
    path = str(d / "0002_broken.up.sql")
    assert err.path == path and err.line == 5
    assert f"{path}:5" in str(err)
    assert "duplicate key value violates unique constraint" in str(err)
    assert "23505" in str(err)
    with psycopg.connect(empty_dsn) as conn:
        assert _ledger(conn) == ["0001_base"]
        assert conn.execute("SELECT to_regclass('half'), to_regclass('never')").fetchone() == (
            None,
            None,
        )
        assert conn.execute("SELECT count(*) FROM base").fetchone() == (0,)


def test_failed_migration_line_comes_from_the_error_position(
    empty_dsn: str, tmp_path: Path
) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_typo.up.sql": (
                "CREATE TABLE ok (id int);\n"
                "SELECT id,\n"
                "       no_such_column\n"  # line 3
                "FROM ok;\n"
            )
        },
    )
    with pytest.raises(MigrationFailed) as info:
        migrate(empty_dsn, directory=d)
    assert info.value.line == 3
    assert 'column "no_such_column" does not exist' in str(info.value)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('leasectl_schema_migrations')").fetchone() != (
            None,
        )
        assert _ledger(conn) == []
        assert conn.execute("SELECT to_regclass('ok')").fetchone() == (None,)


def test_changed_checksum_is_refused_naming_file_and_both_checksums(
    empty_dsn: str, tmp_path: Path
) -> None:
    d = _write(tmp_path / "m", {"0001_t.up.sql": "CREATE TABLE t (id int);\n"})
    assert migrate(empty_dsn, directory=d) == ["0001_t"]
    before = discover(d)[0].checksum
    (d / "0001_t.up.sql").write_text("CREATE TABLE t (id bigint);\n")
    after = discover(d)[0].checksum
    _write(d, {"0002_u.up.sql": "CREATE TABLE u (id int);\n"})
    with pytest.raises(ChecksumMismatch) as info:
        migrate(empty_dsn, directory=d)
    msg = str(info.value)
    assert str(d / "0001_t.up.sql") in msg and before in msg and after in msg
    status = migration_status(empty_dsn, directory=d)
    assert (status.applied, status.pending, status.changed) == ([], ["0002_u"], ["0001_t"])
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('u')").fetchone() == (None,)


def test_no_transaction_file_creates_indexes_concurrently(empty_dsn: str, tmp_path: Path) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_t.up.sql": "CREATE TABLE t (x int, y int);\nINSERT INTO t VALUES (1, 2);\n",
            "0002_idx.up.sql": (
                "-- leasectl: no-transaction\n"
                "-- CREATE INDEX CONCURRENTLY refuses to run inside a transaction block.\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_y ON t (y);\n"
            ),
        },
    )
    assert not discover(d)[1].transactional
    assert migrate(empty_dsn, directory=d) == ["0001_t", "0002_idx"]
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname IN ('t_x', 't_y') ORDER BY 1"
        ).fetchall()
        assert rows == [("t_x", True), ("t_y", True)]
        assert _ledger(conn) == ["0001_t", "0002_idx"]
    assert migrate(empty_dsn, directory=d) == []  # fast path


def test_lock_wait_timeout_names_the_holder(empty_dsn: str, tmp_path: Path) -> None:
    d = _write(
        tmp_path / "m",
        {
            "0001_slow.up.sql": "SELECT pg_sleep(60);\n",
        },
    )
    holder_log = OutputFile(tmp_path / "holder.log")  # a pipe nobody reads could fill
    holder = holder_log.popen(
        [
            sys.executable,
            "-c",
            "import sys; from leasectl.migrate import migrate; "
            "migrate(sys.argv[1], directory=__import__('pathlib').Path(sys.argv[2]))",
            empty_dsn,
            str(d),
        ],
        env=_env(),
    )
    try:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            # The holder marks its application_name just after taking the lock.
            held = wait_until(
                lambda: [
                    app
                    for app in lock_holders(conn, [MIGRATIONS_LEASE])[MIGRATIONS_LEASE]
                    if app.startswith("leasectl-migrate@")
                ],
                40,  # its start-up included; pg_sleep(60) keeps the lock long enough after
                what="the first migrator holds the lock and has marked itself",
            )
            assert held[0].startswith("leasectl-migrate@"), held
            pid = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (held[0],)
            ).fetchone()
            assert pid is not None
            settings = CoreSettings(migrations=MigrationSettings(lock_timeout=1.0))
            with pytest.raises(MigrationLocked) as info:
                migrate(empty_dsn, settings, directory=d)
            msg = str(info.value)
            assert f"backend pid {pid[0]}" in msg
            assert held[0] in msg  # application_name
            assert "from 127.0.0.1" in msg  # client_addr
            assert re.search(r"holding it for \d+s", msg), msg
            assert "gave up after 1s" in msg
    finally:
        holder.kill()
        holder.wait(10)
