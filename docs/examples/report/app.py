"""A leased loop of your own: one row per slot, written by exactly one replica at a time."""

import os
from pathlib import Path

from leasectl import App, TickContext

# Settings as `leasectl run` finds them: LEASECTL_CONFIG, LEASECTL_* variables, LEASECTL_DSN,
# else the embedded PostgreSQL. Our own table comes from our own migrations folder.
app = App(migrations=[Path(__file__).with_name("migrations")])


@app.loop(every=float(os.environ.get("REPORT_EVERY", "60")), leased=True)
def report(ctx: TickContext) -> None:
    with ctx.transaction() as cur:  # fenced: commits only while this replica's epoch is current
        cur.execute(
            "INSERT INTO reports (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


if __name__ == "__main__":
    raise SystemExit(app.run())  # blocks; SIGTERM drains, releases the lease, exits 0
