"""A tiny App without the shipped loops, drilled with ``leasectl drill --app``.

Two leased loops (different intervals and misfire policies) whose ticks commit through the
fence, and one everywhere loop: the drill checks its generic invariants on ``tally`` and
``sweep`` and skips the domain checks (no notifications, jobs or CRLs here).
"""

from __future__ import annotations

from leasectl import App, TickContext

app = App()


@app.loop(every=1, leased=True, jitter=0.0, timeout=5)
def tally(ctx: TickContext) -> None:
    with ctx.transaction() as cur:  # fenced: commits only under the current epoch
        cur.execute("SELECT %s::bigint", (ctx.epoch,))


@app.loop(every=2, leased=True, jitter=0.0, timeout=5, misfire="skip")
def sweep(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute("SELECT %s::bigint", (ctx.epoch,))


@app.loop(every=1, leased=False)
def ping(ctx: TickContext) -> None:
    ctx.check()
