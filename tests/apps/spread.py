"""Six leased loops for the placement tests; each tick writes one fenced row for its slot.

``pinned`` requires the label ``hsm``; the others have no placement wishes of their own (the
test adds a preferred holder through ``leases.loops`` in the environment).
"""

from __future__ import annotations

from leasectl import App, TickContext

app = App()

#: Created by the test before any replica starts (six loops racing to create it would not be).
CREATE = (
    "CREATE TABLE IF NOT EXISTS spread_rows "
    "(loop text, slot timestamptz, replica text, epoch bigint, at timestamptz DEFAULT now())"
)


def _record(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute(
            "INSERT INTO spread_rows (loop, slot, replica, epoch) VALUES (%s, %s, %s, %s)",
            (ctx.loop, ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


for _name in ("alpha", "bravo", "charlie", "delta", "echo"):
    app.loop(every=1, leased=True, name=_name, timeout=5, jitter=0.0)(_record)

app.loop(every=1, leased=True, name="pinned", timeout=5, jitter=0.0, requires_labels=["hsm"])(
    _record
)
