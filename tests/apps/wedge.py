"""An App whose leased tick wedges (ignores cancellation) while ``$WEDGE_FLAG`` names a file."""

from __future__ import annotations

import os
import time

from leasectl import App, TickContext

app = App()

_CREATE = (
    "CREATE TABLE IF NOT EXISTS wedge_rows "
    "(slot timestamptz, replica text, epoch bigint, at timestamptz DEFAULT now())"
)


@app.loop(every=1, leased=True, timeout=1, jitter=0.0)
def wedgy(ctx: TickContext) -> None:
    flag = os.environ.get("WEDGE_FLAG", "")
    while flag and os.path.exists(flag):
        time.sleep(0.05)  # deaf to ctx.check(): a call that never returns
    with ctx.transaction() as cur:
        cur.execute(_CREATE)
        cur.execute(
            "INSERT INTO wedge_rows (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )
