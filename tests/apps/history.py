"""An App for the run-history tests: a leased per-second cron loop and a failing everywhere one."""

from __future__ import annotations

from leasectl import App, TickContext

app = App()


@app.loop(cron="* * * * * *", tz="Europe/Berlin")  # 6 fields: every second, in Berlin time
def beat(ctx: TickContext) -> None:
    with ctx.transaction() as cur:  # fenced
        cur.execute("SELECT 1")


@app.loop(every=0.5, leased=False, jitter=0.0)
def flaky(ctx: TickContext) -> None:
    raise RuntimeError(f"flaky on {ctx.replica_id}: disk full")
