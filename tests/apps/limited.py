"""An App whose everywhere loop hammers one cluster-wide rate limit and records what it got."""

from __future__ import annotations

from leasectl import App, TickContext

app = App()

_CREATE = (
    "CREATE TABLE IF NOT EXISTS limit_events "
    "(replica text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


@app.loop(every=0.5, leased=False, jitter=0.0, timeout=5)
def hammer(ctx: TickContext) -> None:
    with ctx.pool.connection() as conn:
        conn.execute(_CREATE)
        conn.commit()
        for _ in range(200):  # far more than the limit allows: the rest is throttled
            if ctx.limit("test"):
                conn.execute("INSERT INTO limit_events (replica) VALUES (%s)", (ctx.replica_id,))
                conn.commit()
            ctx.check()
