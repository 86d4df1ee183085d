"""leasectl's objects in leasectl's namespace (issue 19).

- A service database that already has its own ``jobs``, ``sessions``, ``owners`` and
  ``schema_migrations`` adopts leasectl untouched, for a plain App and for one including the
  certificate loops; everything leasectl adds is recognisably its own, and is what
  docs/python-api.md lists.
- A foreign ``schema_migrations`` is never read, not even when it has our ledger's columns.
- A database built by leasectl 0.1 (``leasectl_0_1/``: its twelve migration files as released,
  the ledger in ``schema_migrations``, the certificate tables in the default schema) upgrades
  in place, keeps its data, and a cluster of the shipped loops runs on it.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl import App
from leasectl.certs.registry import MIGRATIONS as CERTS_MIGRATIONS
from leasectl.migrate import discover, migrate, migration_status
from tests.conftest import REPO, one, wait_until
from tests.integration.test_cluster_all_loops import (  # noqa: F401 - fixtures
    LEASED,
    N_NOTIFICATIONS,
    Hooks,
    Proc,
    holders,
    hooks,
    loops_ticked,
    seed,
    smtp_port,
    write_config,
)

LEGACY = Path(__file__).with_name("leasectl_0_1")

#: The service's own tables, made before leasectl ever ran (other columns, some rows).
USER_SCHEMA = """
CREATE TABLE jobs (job_id bigserial PRIMARY KEY, queue text NOT NULL, payload jsonb);
CREATE INDEX jobs_queue ON jobs (queue);
INSERT INTO jobs (queue, payload) VALUES ('mail', '{"to": "a"}'), ('pdf', NULL);
CREATE TABLE sessions (token text PRIMARY KEY, user_id integer, expires timestamptz);
INSERT INTO sessions VALUES ('t1', 7, '2030-01-01'), ('t2', 8, NULL);
CREATE TABLE owners (login text, since date);
INSERT INTO owners VALUES ('ann', '2020-02-02');
-- golang-migrate's ledger
CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
INSERT INTO schema_migrations VALUES (20240101120000, false);
"""
USER_TABLES = ("jobs", "sessions", "owners", "schema_migrations")


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Columns, indexes and rows of the service's own tables."""
    out: dict[str, Any] = {}
    for table in USER_TABLES:
        out[table] = (
            conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall(),
            conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s"
                " ORDER BY 1",
                (table,),
            ).fetchall(),
            # test-only: the table names are this file's constants
            sorted(map(repr, conn.execute(f"SELECT * FROM public.{table}").fetchall())),
        )
    return out


#: Every object in a schema, by kind and name: tables, indexes, sequences, views (pg_class),
#: functions (pg_proc) and types that are not a table's row or array type (pg_type).
OBJECTS_SQL = """
SELECT 'relation', c.relname, n.nspname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
UNION ALL
SELECT 'function', p.proname, n.nspname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'type', t.typname, n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND t.typrelid = 0 AND t.typelem = 0
UNION ALL
SELECT 'schema', n.nspname, n.nspname FROM pg_namespace n
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
"""


def _objects(conn: psycopg.Connection[Any]) -> set[tuple[str, str, str]]:
    return {(k, name, schema) for k, name, schema in conn.execute(OBJECTS_SQL).fetchall()}


def documented_objects(block: int) -> set[str]:
    """The names docs/python-api.md lists under "What leasectl puts in your database", in its
    first text block (always) or its second (with the certificate loops)."""
    text = (REPO / "docs" / "python-api.md").read_text()
    section = text.split("## What leasectl puts in your database", 1)[1].split("\n## ", 1)[0]
    body = section.split("```text")[block + 1].split("```", 1)[0]
    return {m[1] for m in re.finditer(r"^\s*[a-z]+\s+([a-z_0-9]+)", body, re.MULTILINE)}


def _run_app(dsn: str, *, certs: bool) -> None:
    """An App of the service's own (one leased loop), started and stopped: its migrations ran
    and it campaigned."""
    app = App(dsn=dsn)
    app.configure(metrics_listen="")

    @app.loop(every=3600, leased=True)
    def report(ctx: Any) -> None:
        return None

    if certs:
        app.include("leasectl.certs")
    with app:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_until(
                lambda: c.execute(
                    "SELECT holder IS NOT NULL FROM leasectl_leases WHERE name = 'report'"
                ).fetchone(),
                timeout=30,
                what="the App took its lease",
            )


@pytest.mark.parametrize("certs", [False, True], ids=["plain", "with-certificate-loops"])
def test_service_database_adopts_leasectl_untouched(empty_dsn: str, certs: bool) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute(USER_SCHEMA)
        before = _snapshot(c)
        objects_before = _objects(c)

    _run_app(empty_dsn, certs=certs)
    _run_app(empty_dsn, certs=certs)  # a second start: nothing pending, nothing touched

    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert _snapshot(c) == before
        added = _objects(c) - objects_before
        assert _objects(c) >= objects_before
    in_public = {name for kind, name, schema in added if schema == "public"}
    certs_objects = {(kind, name) for kind, name, schema in added if schema == "leasectl_certs"}
    elsewhere = {o for o in added if o[2] not in ("public", "leasectl_certs")}
    assert elsewhere == set()
    # Everything in the service's schema is named leasectl_*, and is what the docs list.
    assert {n for n in in_public if not n.startswith("leasectl_")} == set()
    assert in_public == documented_objects(0)
    if certs:
        assert ("schema", "leasectl_certs") in certs_objects
        with psycopg.connect(empty_dsn, autocommit=True) as c:
            tables = {
                r[0]
                for r in c.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'leasectl_certs'"
                ).fetchall()
            }
        functions = {n for kind, n in certs_objects if kind == "function"}
        assert len(tables) == 23 and {"jobs", "sessions", "owners"} <= tables
        assert tables | functions == documented_objects(1)
    else:
        assert certs_objects == set()  # the certificate schema only for Apps that include it


@pytest.mark.parametrize("shaped_like_ours", [False, True], ids=["golang-migrate", "same-columns"])
def test_foreign_schema_migrations_is_never_read(empty_dsn: str, shaped_like_ours: bool) -> None:
    """A view that fails when read stands in for the foreign ledger: reading it would raise."""
    columns = (
        "'1'::text AS version, ''::text AS checksum, now() AS applied_at, 0 AS duration_ms,"
        " ''::text AS applied_by"
        if shaped_like_ours
        else "1::bigint AS version, false AS dirty"
    )
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        c.execute(
            "CREATE FUNCTION read_forbidden() RETURNS boolean LANGUAGE plpgsql VOLATILE AS"
            " $$ BEGIN RAISE EXCEPTION 'schema_migrations was read'; END $$"
        )
        # test-only: the column list is one of the two constants above
        c.execute(f"CREATE VIEW schema_migrations AS SELECT {columns} WHERE read_forbidden()")
    assert migration_status(empty_dsn).pending  # the status look reads nothing foreign either
    migrate(empty_dsn, sources=[CERTS_MIGRATIONS])
    with psycopg.connect(empty_dsn, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('schema_migrations')::text").fetchone() == (
            "schema_migrations",
        )
        assert one(c.execute("SELECT count(*) FROM leasectl_schema_migrations"))[0] > 0
    assert migration_status(empty_dsn, sources=[CERTS_MIGRATIONS]).up_to_date


# -- a leasectl 0.1 database ----------------------------------------------------------------

LEGACY_LEDGER = """
CREATE TABLE schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    applied_by  text NOT NULL
);
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'leasectl';
"""
APP_MIGRATION = "CREATE TABLE reports (slot timestamptz PRIMARY KEY, epoch bigint);\n"


def build_leasectl_0_1(dsn: str, app_folder: Path) -> None:
    """What leasectl 0.1's ``migrate`` (and an App with one migrations folder) left behind,
    with some certificate data in the default schema."""
    app_folder.mkdir(parents=True)
    (app_folder / "0001_reports.up.sql").write_text(APP_MIGRATION)
    record = (
        "INSERT INTO schema_migrations (version, source, checksum, duration_ms, applied_by)"
        " VALUES (%s, %s, %s, 1, 'leasectl 0.1')"
    )
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(LEGACY_LEDGER)
        for path in sorted(LEGACY.glob("*.up.sql")):
            text = path.read_text()
            c.execute(text.encode())
            sha = hashlib.sha256(text.encode()).hexdigest()
            c.execute(record, (path.name.removesuffix(".up.sql"), "leasectl", sha))
        c.execute(APP_MIGRATION.encode())
        sha = hashlib.sha256(APP_MIGRATION.encode()).hexdigest()
        c.execute(record, ("reports:0001_reports", "reports", sha))
        c.execute(
            "INSERT INTO owners VALUES ('o-legacy', 'Legacy', NULL);"
            "INSERT INTO managed_certificates (id, name, common_name, owner_id, status)"
            " VALUES ('c-legacy', 'legacy', 'legacy.example.test', 'o-legacy', 'Active');"
            "INSERT INTO certificate_versions (certificate_id, serial_number, not_before,"
            " not_after, fingerprint_sha256, pem_chain)"
            " VALUES ('c-legacy', 'aa01', now(), now() + interval '1 day', 'f', 'pem');"
            "INSERT INTO jobs (id, type, certificate_id, status)"
            " VALUES ('j-legacy', 'Renewal', 'c-legacy', 'Failed')"
        )


@pytest.mark.slow
def test_leasectl_0_1_database_upgrades_in_place_and_runs(
    empty_dsn: str,
    hooks: Hooks,  # noqa: F811 - the fixture imported above
    smtp_port: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    dsn = empty_dsn
    build_leasectl_0_1(dsn, tmp_path / "reports")
    reports = ("reports", tmp_path / "reports")

    # A plain App first: the ledger is adopted (nothing 0.1 applied runs again: only the files
    # added since), the certificate tables are left where they are.
    released = {p.name.removesuffix(".up.sql") for p in LEGACY.glob("*.up.sql")}
    assert migrate(dsn) == [m.version for m in discover() if m.version not in released]
    with psycopg.connect(dsn, autocommit=True) as c:
        regs = c.execute(
            "SELECT to_regclass('schema_migrations'), to_regclass('leasectl_schema_migrations'),"
            " to_regclass('public.jobs')::text"
        ).fetchone()
        assert regs is not None and regs[0] is None and regs[1] is not None
        assert regs[2] == "jobs"

    # Then an App with the certificate loops and its own folder: only the move runs.
    app = App(dsn=dsn, migrations=[reports])
    app.include("leasectl.certs")
    assert migrate(dsn, sources=app.migration_sources) == ["leasectl_certs:0001_schema"]
    assert migration_status(dsn, sources=app.migration_sources).up_to_date
    certs_files = {m.name for m in CERTS_MIGRATIONS.path.glob("*.up.sql")}
    with psycopg.connect(dsn, autocommit=True) as c:
        public = {
            r[0]
            for r in c.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public'"
            ).fetchall()
        }
        assert {n for n in public if not n.startswith("leasectl_")} == {
            "reports",
            "reports_pkey",
        }
        ledger: dict[str, str] = dict(
            c.execute("SELECT version, source FROM leasectl_schema_migrations").fetchall()
        )
        assert {v for v, s in ledger.items() if s == "leasectl_certs"} == {
            "leasectl_certs:" + f.removesuffix(".up.sql") for f in certs_files
        }
        assert "0003_domain" not in ledger and ledger["reports:0001_reports"] == "reports"
        # The data came along, sequences and triggers with it.
        assert c.execute(
            "SELECT o.name, v.serial_number FROM leasectl_certs.owners o"
            " JOIN leasectl_certs.managed_certificates m ON m.owner_id = o.id"
            " JOIN leasectl_certs.certificate_versions v ON v.certificate_id = m.id"
        ).fetchall() == [("Legacy", "aa01")]
        c.execute(
            "INSERT INTO leasectl_certs.certificate_versions (certificate_id, serial_number,"
            " not_before, not_after, fingerprint_sha256, pem_chain)"
            " VALUES ('c-legacy', 'aa02', now(), now(), 'f', 'pem')"
        )
        c.execute("UPDATE leasectl_certs.jobs SET status = 'Cancelled' WHERE id = 'j-legacy'")
        changed = c.execute(
            "SELECT status_changed_at > now() - interval '1 minute' FROM leasectl_certs.jobs"
        ).fetchone()
        assert changed == (True,)
        seed(c)

    # The shipped loops run on it: two replicas, every leased loop ticks, notifications go out.
    config = tmp_path / "leasectl.yaml"
    write_config(config, dsn, hooks, smtp_port)
    procs = [Proc("A", config, tmp_path), Proc("B", config, tmp_path)]
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_until(lambda: set(holders(c)) >= set(LEASED), timeout=60, what="every lease held")
            wait_until(
                lambda: loops_ticked(c, "A") | loops_ticked(c, "B") == set(LEASED),
                timeout=90,
                what="every leased loop ran",
            )
            wait_until(
                lambda: (
                    one(
                        c.execute(
                            "SELECT count(*) FROM leasectl_certs.notification_events"
                            " WHERE status = 'sent'"
                        )
                    )[0]
                    >= N_NOTIFICATIONS
                ),
                timeout=60,
                what="every seeded notification delivered",
            )
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
    for p in procs:
        assert p.proc.returncode == 0, p.log_path.read_text()[-3000:]
