"""Registry of the CLI-test loops (same contract as ``loops.registry``)."""

from __future__ import annotations

from dataclasses import dataclass

from leasectl.loop import LoopSpec, TickContext


@dataclass(frozen=True)
class ClusterLoopsSettings:
    interval: float = 0.5


SETTINGS_CLASS = ClusterLoopsSettings
LOOP_MODULES = ("alpha", "beta", "everywhere")


def tick(ctx: TickContext) -> None:
    ctx.check()


def build_loops(settings: ClusterLoopsSettings) -> list[LoopSpec]:
    return [
        LoopSpec("alpha", settings.interval, "leased", tick, jitter=0.0),
        LoopSpec("beta", settings.interval, "leased", tick, jitter=0.0),
        LoopSpec("everywhere", settings.interval, "everywhere", tick),
    ]
