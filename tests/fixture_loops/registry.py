"""Registry of the fixture loops (same contract as ``loops.registry``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from leasectl.leases import FENCE_SQL
from leasectl.loop import LoopSpec, TickContext


@dataclass(frozen=True)
class FixtureSettings:
    beat_interval: float = 0.2
    sweep_interval: float = 0.2
    sweep_sleep: float = 0.0  # a tick that ignores stop requests, for drain tests


SETTINGS_CLASS = FixtureSettings
LOOP_MODULES = ("beat", "sweep")

_CREATE = (
    "CREATE TABLE IF NOT EXISTS fixture_beats "
    "(tick_at timestamptz, epoch bigint, replica text, at timestamptz DEFAULT now())"
)
_RECORD = (
    "INSERT INTO fixture_beats (tick_at, epoch, replica) "
    "SELECT %(tick_at)s, %(lease_epoch)s, %(replica)s WHERE " + FENCE_SQL
)


def beat(ctx: TickContext) -> None:
    """Leased: one fenced row per slot."""
    assert ctx.lease is not None
    ctx.check()
    with ctx.pool.connection() as conn:
        conn.execute(_CREATE)
        conn.commit()
        conn.execute(
            _RECORD, {"tick_at": ctx.tick_at, "replica": ctx.replica_id, **ctx.lease.fence_params()}
        )


def sweep(ctx: TickContext) -> None:
    """Everywhere: touches nothing (optionally sleeps, deaf to stop requests)."""
    ctx.check()
    sleep = ctx.config.sweep_sleep if ctx.config is not None else 0.0
    if sleep:
        ctx.log.info("sweep sleeping %ss", sleep, extra={"action": "sweep_sleeping"})
        time.sleep(sleep)


def build_loops(settings: FixtureSettings) -> list[LoopSpec]:
    return [
        LoopSpec("beat", settings.beat_interval, "leased", beat, jitter=0.0),
        LoopSpec("sweep", settings.sweep_interval, "everywhere", sweep),
    ]
