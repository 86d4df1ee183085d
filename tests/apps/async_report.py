"""The README's report example as an ``async def`` loop: one row per slot, fenced, async."""

from __future__ import annotations

import os
from pathlib import Path

from leasectl import App, AsyncTickContext

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "report" / "migrations"
app = App(migrations=[("async_report", EXAMPLE)])


@app.loop(every=float(os.environ.get("REPORT_EVERY", "1")), leased=True, jitter=0.0)
async def report(ctx: AsyncTickContext) -> None:
    async with ctx.transaction() as cur:  # fenced like the sync one, over the async pool
        await cur.execute(
            "INSERT INTO reports (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


if __name__ == "__main__":
    raise SystemExit(app.run())
