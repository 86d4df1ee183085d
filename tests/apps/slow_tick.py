"""An App whose leased tick runs long but listens: it calls ``ctx.check()`` every 50 ms."""

from __future__ import annotations

import time

from leasectl import App, TickContext

app = App()


@app.loop(every=1, leased=True, timeout=60, jitter=0.0)
def slow(ctx: TickContext) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        ctx.check()  # raises TickCancelled once `leasectl loop pause slow --now` arrives
        time.sleep(0.05)
