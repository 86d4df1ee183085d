"""leasectl: leader-elected periodic loops for Python services on one PostgreSQL.

This module only re-exports; the names in ``__all__`` are the canonical import paths.
"""

from __future__ import annotations

__version__ = "0.1.0"

from leasectl.errors import (  # noqa: E402
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
    NotMigrated,
    RowLockTimeout,
    SafetyInequalityViolated,
    TickCancelled,
    UnsupportedTopology,
)
from leasectl.leases import FENCE_SQL, Lease, LeaseEvent  # noqa: E402
from leasectl.lease_manager import LeaseManager  # noqa: E402
from leasectl.locks import LockSession  # noqa: E402
from leasectl.loop import LoopSpec, TickContext  # noqa: E402
from leasectl.migrate import MigrationSource  # noqa: E402
from leasectl.app import App  # noqa: E402  (last: it composes everything above)

__all__ = [
    "__version__",
    # the application API
    "App",
    "LoopSpec",
    "TickContext",
    "MigrationSource",
    # leases
    "Lease",
    "LeaseEvent",
    "LeaseManager",
    "LockSession",
    "FENCE_SQL",
    # errors
    "LeasectlError",
    "ConfigError",
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
