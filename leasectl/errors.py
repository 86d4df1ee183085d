"""One exception tree for leasectl, grouped by what the caller should do.

::

    LeasectlError
     ├── ConfigError              fix the configuration; nothing was started
     ├── MissingExtra             an optional part is not installed: pip install its extra
     ├── DatabaseUnavailable      transient: retry with backoff
     │    ├── NotMigrated         the leasectl tables do not exist yet: migrate first
     │    └── RowLockTimeout      a statement waited past lock_timeout for a row lock
     ├── UnsupportedTopology      the connection path cannot carry session locks
     ├── TickCancelled            a tick was asked to stop (shutdown, or its timeout)
     ├── LeaseError
     │    ├── LeaseLost           stop side effects now; the lease is gone
     │    ├── FencingRejected     a write carried an epoch that is no longer current
     │    └── LeaseTimeout        waited for a lease longer than allowed
     ├── KeyCollision             two lease names hash to the same advisory key
     ├── SafetyInequalityViolated lease_ttl + safety_margin > D_srv
     └── MigrationError
          ├── ChecksumMismatch    an applied file was edited
          ├── MigrationFailed     a file failed; nothing of it was kept
          └── MigrationLocked     another migrator held the lock too long

Losing a contest is not an error: ``try_acquire`` returns what it got.
"""

from __future__ import annotations


class LeasectlError(Exception):
    """Base of every error leasectl raises on purpose."""

    __module__ = "leasectl"


class ConfigError(LeasectlError):
    """The configuration is invalid; ``problems`` lists every problem found, not the first only."""

    __module__ = "leasectl"

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid configuration in {source}" if source else "invalid configuration"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head} ({len(self.problems)} problem(s)):\n{body}")


class MissingExtra(LeasectlError):
    """An optional part of leasectl is not installed; the message names the extra to install.

    ``extra`` is its name (``embedded``, ``certs``, ``demo``), ``missing`` the modules not found.
    """

    __module__ = "leasectl"

    def __init__(self, message: str, *, extra: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = list(missing)
        super().__init__(message)


class DatabaseUnavailable(LeasectlError):
    """The database could not be reached or dropped the connection; retry with backoff."""

    __module__ = "leasectl"


class NotMigrated(DatabaseUnavailable):
    """The database has no leasectl tables yet: run ``leasectl migrate`` (or start a replica)."""

    __module__ = "leasectl"


class RowLockTimeout(DatabaseUnavailable):
    """A statement waited longer than ``lock_timeout`` for a row lock; retry later.

    On the lock connection this is an epoch bump stuck behind the previous holder's fenced
    transactions: the new holder gives the locks back and campaigns again, rather than wait.
    """

    __module__ = "leasectl"


class TickCancelled(LeasectlError):
    """The tick was asked to stop (shutdown grace over, or its timeout passed)."""

    __module__ = "leasectl"


class UnsupportedTopology(LeasectlError):
    """The lock connection goes through something that cannot hold session state.

    Advisory locks live in a server session; a transaction-mode pooler hands each
    transaction to a different session, and a standby cannot take them at all.
    """

    __module__ = "leasectl"


class LeaseError(LeasectlError):
    """Base for errors about one named lease."""

    __module__ = "leasectl"

    def __init__(self, message: str, *, lease: str, epoch: int | None = None) -> None:
        self.lease = lease
        self.epoch = epoch
        super().__init__(message)


class LeaseLost(LeaseError):
    """The lease is no longer held (or can no longer be proven held): stop side effects now."""

    __module__ = "leasectl"

    def __init__(self, lease: str, epoch: int | None, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"lease {lease!r} (epoch {epoch}) lost: {reason}", lease=lease, epoch=epoch
        )


class FencingRejected(LeaseError):
    """A guarded write was refused because a newer holder has bumped the epoch."""

    __module__ = "leasectl"

    def __init__(self, lease: str, epoch: int, current: int | None) -> None:
        self.current = current
        super().__init__(
            f"write fenced off: lease {lease!r} epoch {epoch} is stale (current epoch {current})",
            lease=lease,
            epoch=epoch,
        )


class LeaseTimeout(LeaseError):
    """Waiting for a lease took longer than the allowed number of seconds."""

    __module__ = "leasectl"

    def __init__(self, lease: str, seconds: float, holder: str | None = None) -> None:
        self.seconds = seconds
        self.holder = holder
        held = f"; it is held by {holder}" if holder else ""
        super().__init__(
            f"timed out after {seconds:.1f}s waiting for lease {lease!r}{held}", lease=lease
        )


class KeyCollision(LeasectlError):
    """Two lease names map to the same 32-bit advisory key; rename one of them."""

    __module__ = "leasectl"

    def __init__(self, first: str, second: str, key: int) -> None:
        self.names = (first, second)
        self.key = key
        super().__init__(
            f"lease names {first!r} and {second!r} hash to the same advisory key {key}; "
            "rename one of them"
        )


class SafetyInequalityViolated(LeasectlError):
    """lease_ttl + safety_margin exceeds D_srv, when the server may drop a silent holder."""

    __module__ = "leasectl"


class MigrationError(LeasectlError):
    """Base for schema migration failures."""

    __module__ = "leasectl"


class ChecksumMismatch(MigrationError):
    """An applied migration file was changed after it ran."""

    __module__ = "leasectl"

    def __init__(self, version: str, path: str, recorded: str, actual: str) -> None:
        self.version = version
        self.path = path
        self.recorded = recorded
        self.actual = actual
        super().__init__(
            f"migration {path} was applied with checksum {recorded} but the file now has "
            f"checksum {actual}; applied migrations must not change — add a new migration instead"
        )


class MigrationFailed(MigrationError):
    """A migration file failed; its transaction was rolled back and the ledger is unchanged."""

    __module__ = "leasectl"

    def __init__(self, path: str, line: int | None, pg_message: str) -> None:
        self.path = path
        self.line = line
        self.pg_message = pg_message
        where = f"{path}:{line}" if line else path
        super().__init__(f"migration {where} failed: {pg_message}")


class MigrationLocked(MigrationError):
    """Another migrator held the migration lock longer than the allowed wait."""

    __module__ = "leasectl"

    def __init__(self, seconds: float, holder: str) -> None:
        self.seconds = seconds
        self.holder = holder
        super().__init__(
            f"gave up after {seconds:.0f}s waiting for the migration lock; it is held by {holder}"
        )
