"""Async loops that only cancellation can stop: one waits for ever (lease loss, shutdown), one
outlives its timeout. Each records how its task ended in ``cancels``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from leasectl import App, AsyncTickContext

app = App(migrations=[("async_cancel", Path(__file__).with_name("async_cancel_migrations"))])


async def _record(ctx: AsyncTickContext, what: str) -> None:
    async with ctx.pool.connection() as conn:  # unfenced: the record must survive
        await conn.execute(
            "INSERT INTO cancels (loop, replica, epoch) VALUES (%s, %s, %s)",
            (what, ctx.replica_id, ctx.epoch),
        )


async def _wait_forever(ctx: AsyncTickContext) -> None:
    await _record(ctx, f"{ctx.loop}:started")
    try:
        await asyncio.sleep(3600)  # never calls ctx.check(): only a task cancellation ends it
    except asyncio.CancelledError:
        await _record(ctx, ctx.loop)
        raise


@app.loop(every=3600, timeout=3000)
async def hold(ctx: AsyncTickContext) -> None:
    await _wait_forever(ctx)


@app.loop(every=3600, timeout=1, leased=False)
async def overrun(ctx: AsyncTickContext) -> None:
    await _wait_forever(ctx)
