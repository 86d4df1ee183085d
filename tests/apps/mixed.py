"""An App with loops of its own plus the shipped certificate loops.

(``include("leasectl.certs")``)
"""

from __future__ import annotations

from leasectl import App, TickContext

app = App()
app.include("leasectl.certs")


@app.loop(every=0.5, leased=True, jitter=0.0)
def user_leased(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute("SELECT 1")


@app.loop(every=0.5, leased=False)
def user_everywhere(ctx: TickContext) -> None:
    ctx.check()
