"""Tick wrappers (``App.wrap``): run each tick inside what a wrapper adds, e.g. a span."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from leasectl.loop import AsyncTickContext, LoopSpec, TickContext

SyncTick = Callable[[TickContext], None]
AsyncTick = Callable[[AsyncTickContext], Awaitable[None]]
#: ``wrapper(ctx, run)`` runs the tick function ``run(ctx)`` inside whatever it adds (a span)
TickWrapper = Callable[[TickContext, SyncTick], None]
#: the same for ``async def`` loops: ``await wrapper(ctx, run)`` awaits ``run(ctx)`` inside it
AsyncTickWrapper = Callable[[AsyncTickContext, AsyncTick], Awaitable[None]]


def wrap_tick(
    spec: LoopSpec, wrappers: Sequence[TickWrapper], async_wrappers: Sequence[AsyncTickWrapper]
) -> LoopSpec:
    """``spec`` whose run goes through the wrappers of its kind (the first one outermost)."""
    run: Any = spec.run
    if spec.is_async:
        for awrapper in reversed(async_wrappers):
            run = _wrapped_async(awrapper, run)
    else:
        for wrapper in reversed(wrappers):
            run = _wrapped_run(wrapper, run)
    return spec if run is spec.run else replace(spec, run=run)


def _wrapped_run(wrapper: TickWrapper, inner: SyncTick) -> SyncTick:
    return lambda ctx: wrapper(ctx, inner)


def _wrapped_async(wrapper: AsyncTickWrapper, inner: AsyncTick) -> AsyncTick:
    async def run(ctx: AsyncTickContext) -> None:  # still ``async def``: spec.is_async holds
        await wrapper(ctx, inner)

    return run
