"""The fifteen loops, in the order they are documented.

Each module defines ``LOOP: LoopSpec`` and ``build(settings: LoopsSettings) -> LoopSpec | None``
(None when disabled in config); the daemon asks this module, leasectl never imports loops
directly except through ``scheduler.loops_package``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec
from leasectl.migrate import MigrationSource

SETTINGS_CLASS = LoopsSettings

#: The certificate tables, in their own schema ``leasectl_certs``: applied (after leasectl's
#: own) only for an App that includes these loops. Their first four files were leasectl 0.1's
#: own 0003/0004/0006/0009, which created the tables in the default schema; a database that
#: recorded those gets its rows renamed and 0001_schema moves the tables (see that file).
MIGRATIONS = MigrationSource(
    "leasectl_certs",
    Path(__file__).with_name("migrations"),
    replaces=(
        ("0002_domain", "0003_domain"),
        ("0003_leased_loops", "0004_leased_loops"),
        ("0004_jobs_claim_order", "0006_jobs_claim_order"),
        ("0005_alert_channels", "0009_alert_channels"),
    ),
)

LOOP_MODULES: tuple[str, ...] = (
    # HA-safe, everywhere
    "job_processor",
    "job_retry",
    "job_timeout",
    # idempotent, everywhere
    "renewal_check",
    "agent_health",
    "short_lived_expiry",
    "network_scan",
    "health_check",
    "acme_gc",
    "session_gc",
    # leased: exactly one replica
    "notification_send",
    "notification_retry",
    "digest",
    "cloud_discovery",
    "crl_generation",
)


def build_loops(settings: LoopsSettings) -> list[LoopSpec]:
    """The enabled loops for these settings."""
    specs: list[LoopSpec] = []
    for name in LOOP_MODULES:
        module = importlib.import_module(f"leasectl.certs.{name}")
        spec = module.build(settings)
        if spec is not None:
            specs.append(spec)
    return specs
