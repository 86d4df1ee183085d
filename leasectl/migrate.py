"""Schema migrations, serialized by the lease lock primitive and recorded in a ledger.

Migrations are numbered ``NNNN_what.up.sql`` files. Each runs in its own transaction together
with its ledger row, so a file is applied entirely or not at all. A file whose first lines
contain ``-- leasectl: no-transaction`` (needed for ``CREATE INDEX CONCURRENTLY``) runs
outside a transaction; if it fails halfway, what it did stays and it is retried next time,
so write such files idempotently (``IF NOT EXISTS``).

The ledger is ``leasectl_schema_migrations``. A database built by leasectl 0.1 kept it in
``schema_migrations``; that table is renamed in place when, and only when, it is recognisably
leasectl's (our columns, our core tables, our first file with its checksum). Any other
``schema_migrations`` (golang-migrate, dbmate, Rails) is never read or written.

Concurrency: many replicas may start at once. Each first checks, without any lock, whether
anything is pending (the fast path). Otherwise it takes the reserved lease
``leasectl:migrations`` by try-lock polling (never a blocking ``pg_advisory_lock``), re-reads
the ledger under the lock, applies what is still pending and releases.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from leasectl import sql
from leasectl._sqlsplit import split as split_statements
from leasectl.db import connect
from leasectl.errors import (
    ChecksumMismatch,
    DatabaseUnavailable,
    LeaseTimeout,
    MigrationError,
    MigrationFailed,
    MigrationLocked,
)
from leasectl.keys import MIGRATIONS_LEASE
from leasectl.locks import Holder, LockSession
from leasectl.settings import CoreSettings

Q = sql.load("migrate")
NO_TRANSACTION = "-- leasectl: no-transaction"
_LOCKED_AT = re.compile(r"^leasectl-migrate@(\d+)/")
_NAME = re.compile(r"^(?P<version>\d{4,}_[A-Za-z0-9_]+)\.up\.sql$")


#: The ledger's source name for leasectl's own migrations.
OWN_SOURCE = "leasectl"

#: sha256 of ``0001_leasectl_core.up.sql``, unchanged since the first release: a legacy
#: ``schema_migrations`` whose row for it has another checksum is not leasectl's.
LEGACY_CORE_CHECKSUM = "0499e58319e9c4378fffc890b50b4ab258a0fd99dd04a684483aa56c2a555931"


@dataclass(frozen=True)
class MigrationSource:
    """A folder of an application's own migrations, applied after leasectl's.

    Each source is its own version namespace: its files are recorded in the ledger as
    ``<name>:<version>``, so an application's ``0001_init`` never collides with leasectl's.

    ``replaces`` maps a version of this folder to the ledger key it was once recorded under
    (a file moved here from another folder): when the old key is in the ledger, its row is
    renamed to the new key and the file is not run again.
    """

    name: str
    path: Path
    replaces: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.name or self.name == OWN_SOURCE or ":" in self.name:
            raise MigrationError(
                f"migration source name {self.name!r} for {self.path}: must be non-empty, "
                f"not {OWN_SOURCE!r}, and contain no ':'"
            )

    @staticmethod
    def default_name(path: Path) -> str:
        """The folder's name, with its parent's when the folder is just ``migrations``."""
        resolved = path.resolve()
        if resolved.name in ("migrations", "sql") and resolved.parent.name:
            return f"{resolved.parent.name}/{resolved.name}"
        return resolved.name


@dataclass(frozen=True)
class Migration:
    version: str
    path: str
    text: str
    source: str = OWN_SOURCE
    replaces: str | None = None

    @property
    def key(self) -> str:
        """The ledger's ``version``: the bare version for leasectl's own files."""
        return self.version if self.source == OWN_SOURCE else f"{self.source}:{self.version}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def transactional(self) -> bool:
        head = self.text.lstrip().splitlines()[:5]
        return not any(line.strip().lower() == NO_TRANSACTION for line in head)


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[str]
    pending: list[str]
    changed: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed


def packaged_directory() -> Traversable:
    """The migrations shipped inside the package (works for wheels and editable installs)."""
    return resources.files("leasectl.migrations")


def discover(
    directory: Path | Traversable | None = None, source: str = OWN_SOURCE
) -> list[Migration]:
    """All ``*.up.sql`` files, ordered by their numeric prefix."""
    base: Path | Traversable = directory if directory is not None else packaged_directory()
    if isinstance(base, Path) and not base.is_dir():
        raise MigrationError(f"migrations folder {base} does not exist or is not a folder")
    found: list[Migration] = []
    for entry in base.iterdir():
        m = _NAME.match(entry.name)
        if not m:
            continue
        text = entry.read_text(encoding="utf-8")
        found.append(Migration(m["version"], str(entry), text, source))
    found.sort(key=lambda mig: (int(mig.version.split("_", 1)[0]), mig.version))
    versions = [mig.version.split("_", 1)[0] for mig in found]
    dupes = sorted({v for v in versions if versions.count(v) > 1})
    if dupes:
        raise MigrationError(f"duplicate migration numbers in {base}: {', '.join(dupes)}")
    return found


def _applied(conn: psycopg.Connection[Any]) -> dict[str, str]:
    row = conn.execute(Q["ledger_exists"]).fetchone()
    if not row or not row[0]:
        return {}
    return {v: c for v, c, _ in conn.execute(Q["applied"]).fetchall()}


def _is_legacy_ledger(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``schema_migrations`` is leasectl 0.1's ledger (and ours is not there yet)."""
    row = conn.execute(Q["legacy_ledger"]).fetchone()
    if not row or not row[0]:
        return False  # not ours by its columns: its rows are never read
    first = conn.execute(Q["legacy_first_row"]).fetchone()
    return first is not None and first[0] == LEGACY_CORE_CHECKSUM


def _adopt_legacy_ledger(conn: psycopg.Connection[Any]) -> None:
    """Rename leasectl 0.1's ``schema_migrations`` to ours, in one transaction (under the lock)."""
    with conn.transaction():
        if _is_legacy_ledger(conn):
            conn.execute(Q["adopt_legacy_ledger"])
            conn.execute(Q["adopt_legacy_pkey"])
            conn.execute(Q["adopt_legacy_source"])


def _rename_replaced(conn: psycopg.Connection[Any], migrations: Iterable[Migration]) -> None:
    """Move the ledger rows of files that moved folders to their new keys."""
    with conn.transaction():
        for mig in migrations:
            if mig.replaces:
                conn.execute(
                    Q["rename_replaced"],
                    {
                        "version": mig.key,
                        "source": mig.source,
                        "checksum": mig.checksum,
                        "replaces": mig.replaces,
                    },
                )


def _applied_for_status(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The ledger as ``migrate`` will see it: a legacy one counts (read, not adopted)."""
    applied = _applied(conn)
    if not applied and _is_legacy_ledger(conn):
        applied = {v: c for v, c in conn.execute(Q["legacy_applied"]).fetchall()}
    return applied


def status(conn: psycopg.Connection[Any], migrations: Iterable[Migration]) -> MigrationStatus:
    applied = _applied_for_status(conn)
    ok, pending, changed = [], [], []
    for mig in migrations:
        if mig.key not in applied and mig.replaces in applied:
            ok.append(mig.key)  # recorded under its old key; migrate renames the row
        elif mig.key not in applied:
            pending.append(mig.key)
        elif applied[mig.key] != mig.checksum:
            changed.append(mig.key)
        else:
            ok.append(mig.key)
    return MigrationStatus(ok, pending, changed)


def _check_checksums(applied: dict[str, str], migrations: list[Migration]) -> None:
    for mig in migrations:
        recorded = applied.get(mig.key)
        if recorded is not None and recorded != mig.checksum:
            raise ChecksumMismatch(mig.key, mig.path, recorded, mig.checksum)


def _line_of(text: str, position: int | None) -> int | None:
    if not position:
        return None
    return text.count("\n", 0, max(0, position - 1)) + 1


def _run_statements(conn: psycopg.Connection[Any], mig: Migration) -> None:
    """Execute the file one statement at a time; a failure knows its statement's line."""
    for stmt in split_statements(mig.text):
        body: LiteralString = stmt.text  # type: ignore[assignment]
        try:
            conn.execute(body)
        except psycopg.Error as exc:
            within = _position(exc)
            line = stmt.line
            if within:
                # The position is within the statement: point at the offending line itself.
                line = _line_of(mig.text, stmt.offset + within) or stmt.line
            exc.add_note(f"leasectl:line={line}")
            raise


def _failed_line(exc: psycopg.Error) -> int | None:
    for note in getattr(exc, "__notes__", ()):
        if note.startswith("leasectl:line="):
            return int(note.split("=", 1)[1])
    return None


def _apply_one(conn: psycopg.Connection[Any], mig: Migration, applied_by: str) -> None:
    started = time.monotonic()

    def record() -> None:
        conn.execute(
            Q["record"],
            {
                "version": mig.key,
                "source": mig.source,
                "checksum": mig.checksum,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "applied_by": applied_by,
            },
        )

    try:
        if mig.transactional:
            with conn.transaction():
                _run_statements(conn, mig)
                record()
        else:
            conn.autocommit = True
            try:
                _run_statements(conn, mig)
                record()
            finally:
                conn.autocommit = False
    except psycopg.OperationalError as exc:
        if exc.sqlstate is None:
            raise DatabaseUnavailable(f"connection lost while applying {mig.path}: {exc}") from exc
        raise MigrationFailed(mig.path, _failed_line(exc), _message(exc)) from exc
    except psycopg.Error as exc:
        raise MigrationFailed(mig.path, _failed_line(exc), _message(exc)) from exc


def _position(exc: psycopg.Error) -> int | None:
    pos = exc.diag.statement_position
    return int(pos) if pos else None


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    msg = f"{diag.severity or 'ERROR'} {diag.sqlstate or ''}: {diag.message_primary or exc}"
    if diag.message_detail:
        msg += f" (detail: {diag.message_detail})"
    return msg


def migrate(
    dsn: str,
    settings: CoreSettings | None = None,
    *,
    directory: Path | Traversable | None = None,
    applied_by: str | None = None,
    lock_dsn: str | None = None,
    sources: Sequence[MigrationSource] = (),
) -> list[str]:
    """Apply every pending migration, leasectl's then each source's in order; return the
    ledger versions this call applied.

    :raises ChecksumMismatch: an applied file changed.
    :raises MigrationFailed: a file failed (rolled back, ledger unchanged).
    :raises MigrationLocked: waited ``migrations.lock_timeout`` seconds for another migrator.
    """
    settings = settings or CoreSettings()
    who = applied_by or f"{socket.gethostname()}/{os.getpid()}"
    migrations = _all_migrations(
        directory if directory is not None else settings.migrations.directory, sources
    )
    try:
        with connect(dsn, settings.database, "leasectl-migrate") as conn:
            applied = _applied(conn)
            _check_checksums(applied, migrations)
            if all(m.key in applied for m in migrations):
                return []  # fast path: no lock taken
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to run migrations: {exc}") from exc

    session = LockSession.connect(
        lock_dsn or dsn,
        settings.database,
        f"leasectl-migrate/{who}",
        namespace=settings.leases.namespace,
        check_pooler=False,
    )
    with session:
        try:
            session.wait_acquire(MIGRATIONS_LEASE, settings.migrations.lock_timeout)
        except LeaseTimeout as exc:
            holder = session.holders([MIGRATIONS_LEASE]).get(MIGRATIONS_LEASE)
            raise MigrationLocked(
                settings.migrations.lock_timeout, _describe_migration_holder(holder)
            ) from exc
        # application_name is cut at 63 bytes: the timestamp goes first so it survives.
        session.conn.execute(
            Q["mark_holder"], {"app": f"leasectl-migrate@{time.time():.0f}/{who}"[:63]}
        )
        done: list[str] = []
        with connect(dsn, settings.database, "leasectl-migrate") as conn:
            _adopt_legacy_ledger(conn)
            conn.execute(Q["create_ledger"])
            conn.commit()
            _rename_replaced(conn, migrations)
            applied = _applied(conn)
            conn.commit()
            _check_checksums(applied, migrations)
            for mig in migrations:
                if mig.key in applied:
                    continue
                _apply_one(conn, mig, who)
                done.append(mig.key)
        session.release([MIGRATIONS_LEASE])
        return done


def _describe_migration_holder(holder: Holder | None) -> str:
    if holder is None:
        return "nobody any more (it was released just now)"
    text = holder.describe()
    m = _LOCKED_AT.match(holder.application_name or "")
    if m:
        text += f", holding it for {time.time() - int(m[1]):.0f}s"
    return text


def _all_migrations(
    directory: Path | Traversable | None, sources: Sequence[MigrationSource]
) -> list[Migration]:
    names = [src.name for src in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MigrationError(f"migration source(s) given twice: {', '.join(dupes)}")
    found = discover(directory)
    for src in sources:
        mine = discover(src.path, src.name)
        replaced = dict(src.replaces)
        unknown = sorted(set(replaced) - {m.version for m in mine})
        if unknown:
            raise MigrationError(
                f"migration source {src.name!r}: replaces names no file in {src.path}: "
                f"{', '.join(unknown)}"
            )
        found += [replace(m, replaces=replaced.get(m.version)) for m in mine]
    return found


def migration_status(
    dsn: str,
    settings: CoreSettings | None = None,
    directory: Path | None = None,
    sources: Sequence[MigrationSource] = (),
) -> MigrationStatus:
    settings = settings or CoreSettings()
    migrations = _all_migrations(
        directory if directory is not None else settings.migrations.directory, sources
    )
    try:
        with connect(dsn, settings.database, "leasectl-migrate") as conn:
            return status(conn, migrations)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to read migration status: {exc}") from exc
