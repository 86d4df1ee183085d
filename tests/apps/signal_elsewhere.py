"""An App whose everywhere loop sends SIGTERM to its own loop thread, once.

The kernel may deliver a process's SIGTERM to any of its threads. CPython runs the Python
handler on the main thread only, and a main thread blocked in a lock acquire without a
timeout is not interrupted by a signal another thread received: ``App.run`` then never
stopped (seen under load). Sending the signal to a loop thread makes that delivery certain.
"""

from __future__ import annotations

import signal
import threading

from leasectl import App, TickContext

app = App()
_ticks = 0


@app.loop(every=0.5, leased=False, jitter=0.0)
def signal_elsewhere(ctx: TickContext) -> None:
    # At the third tick (a second in), well after start-up: the main thread is then waiting
    # in App.run, not running Python code that would see the signal anyway.
    global _ticks
    _ticks += 1
    if _ticks == 3:
        print("sending SIGTERM to the loop thread", flush=True)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
