"""The leader example (docs/examples/leader/app.py) as a test replica that says what it sees.

Prints one JSON object per line: ``{"ev": "acquired" | "lost", "lease", "epoch", "reason",
"mono"}`` from ``on_acquired`` / ``on_lost``, ``{"ev": "is_leader", "value", "mono"}`` each
time ``app.is_leader("consumer")`` flips (polled every 20 ms, as a web handler would ask), and
``{"ev": "started", "replica"}`` once running, ``{"ev": "leader_started", "epoch"}`` as the
leader function starts (bench/leader.py measures to it). SIGTERM stops it gracefully (exit 0).
"""

from __future__ import annotations

import json
import runpy
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leasectl import App, LeaseEvent, LeaseHandle

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "leader" / "app.py"


def emit(**obj: Any) -> None:
    sys.stdout.write(json.dumps({**obj, "mono": time.monotonic()}) + "\n")
    sys.stdout.flush()


def main() -> int:
    app: App = runpy.run_path(str(EXAMPLE))["app"]

    def started(lease: LeaseHandle, run: Callable[[], None]) -> None:
        emit(ev="leader_started", lease=lease.name, epoch=lease.epoch)
        run()

    app.wrap(leader=started)

    @app.on_acquired
    def acquired(event: LeaseEvent) -> None:
        emit(ev="acquired", lease=event.lease, epoch=event.epoch, reason=event.reason)

    @app.on_lost
    def lost(event: LeaseEvent) -> None:
        emit(ev="lost", lease=event.lease, epoch=event.epoch, reason=event.reason)

    def watch() -> None:
        while app.replica_id is None:
            time.sleep(0.01)
        emit(ev="started", replica=app.replica_id)
        last = None
        while True:
            now = app.is_leader("consumer")
            if now != last:
                emit(ev="is_leader", value=now)
                last = now
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return app.run()


if __name__ == "__main__":
    raise SystemExit(main())
