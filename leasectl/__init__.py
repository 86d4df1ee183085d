"""leasectl: leader-elected periodic loops for Python services on one PostgreSQL.

This module only re-exports; the names in ``__all__`` are the canonical import paths.
"""

from __future__ import annotations

from leasectl._lease_block import LeaseBlock
from leasectl._version import __version__
from leasectl.app import App
from leasectl.errors import (
    ChecksumMismatch,
    ConfigError,
    DatabaseUnavailable,
    FencingRejected,
    KeyCollision,
    LeasectlError,
    LeaseError,
    LeaseLost,
    LeaseTimeout,
    MigrationError,
    MigrationFailed,
    MigrationLocked,
    MissingExtra,
    NotMigrated,
    RowLockTimeout,
    SafetyInequalityViolated,
    TickCancelled,
    UnsupportedTopology,
)
from leasectl.leader import LeaseHandle
from leasectl.lease_manager import LeaseManager
from leasectl.leases import FENCE_SQL, Lease, LeaseEvent
from leasectl.locks import LockSession
from leasectl.loop import AsyncTickContext, LoopSpec, TickContext
from leasectl.migrate import MigrationSource

__all__ = [
    "__version__",
    # the application API
    "App",
    "LoopSpec",
    "TickContext",
    "AsyncTickContext",
    "MigrationSource",
    # leases
    "Lease",
    "LeaseEvent",
    "LeaseBlock",
    "LeaseHandle",
    "LeaseManager",
    "LockSession",
    "FENCE_SQL",
    # errors
    "LeasectlError",
    "ConfigError",
    "MissingExtra",
    "DatabaseUnavailable",
    "NotMigrated",
    "RowLockTimeout",
    "UnsupportedTopology",
    "TickCancelled",
    "LeaseError",
    "LeaseLost",
    "FencingRejected",
    "LeaseTimeout",
    "KeyCollision",
    "SafetyInequalityViolated",
    "MigrationError",
    "ChecksumMismatch",
    "MigrationFailed",
    "MigrationLocked",
]
