"""The fifteen loops, in the order they are documented.

Each module defines ``LOOP: LoopSpec`` and ``build(settings: LoopsSettings) -> LoopSpec | None``
(None when disabled in config); the daemon asks this module, leasectl never imports loops
directly except through ``scheduler.loops_package``.
"""

from __future__ import annotations

import importlib

from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec

SETTINGS_CLASS = LoopsSettings

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
