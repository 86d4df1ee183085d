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
    SafetyInequalityViolated,
    UnsupportedTopology,
)
from leasectl.leases import FENCE_SQL, Lease, LeaseEvent, LeaseManager  # noqa: E402
from leasectl.locks import LockSession  # noqa: E402

__all__ = [
    "__version__",
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
    "UnsupportedTopology",
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
