"""The drill-only leased loop the ``wedge`` kind blocks (see :mod:`.drill_app`).

Its tick does nothing unless the flag file ``$LEASECTL_DRILL_WEDGE_DIR/<replica id>`` exists:
then it logs ``drill_wedge_blocked`` and blocks until the drill removes the file, deaf to
``ctx.check()`` and to the stop event, so only the daemon's real watchdog (``timeout +
scheduler.wedge_grace``) can get the loop running elsewhere. When the call finally returns
the tick writes a row through ``ctx.transaction()``: the fence must refuse it, because
another replica took the lease and bumped the epoch meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from leasectl import sql
from leasectl.loop import LoopSpec, TickContext

Q = sql.load("wedge", package="leasectl.tools.drill")
log = logging.getLogger("leasectl.drill.wedge")

WEDGE_LOOP = "drill_wedge"
WEDGE_DIR_ENV = "LEASECTL_DRILL_WEDGE_DIR"
#: The wedge loop's tick timeout; with the drill's ``scheduler.wedge_grace`` this is how long
#: a wedged tick runs before the watchdog gives its lease up.
WEDGE_TIMEOUT = 2.0
WEDGE_INTERVAL = 1.0


def _wedge_tick(ctx: TickContext) -> None:
    folder = os.environ.get(WEDGE_DIR_ENV, "")
    flag = Path(folder) / ctx.replica_id
    if not folder or not flag.exists():
        return  # the normal tick: instant, so the watchdog never mistakes it for a wedge
    log.warning(
        "drill: tick of %s wedged on purpose until %s is removed",
        ctx.loop,
        flag,
        extra={
            "action": "drill_wedge_blocked",
            "loop": ctx.loop,
            "lease": ctx.loop,
            "replica": ctx.replica_id,
            "epoch": ctx.epoch,
            "tick_at": ctx.tick_at.isoformat(),
        },
    )
    while flag.exists():
        time.sleep(0.05)  # ignores ctx.check() and ctx.stop: a call that never returns
    with ctx.transaction() as cur:  # the late write: refused once the epoch has moved
        cur.execute(
            Q["wedge_write"], {"slot": ctx.tick_at, "replica": ctx.replica_id, "epoch": ctx.epoch}
        )


def wedge_spec() -> LoopSpec:
    """The drill-only leased loop whose tick the ``wedge`` kind blocks."""
    return LoopSpec(
        name=WEDGE_LOOP,
        interval=WEDGE_INTERVAL,
        placement="leased",
        run=_wedge_tick,
        jitter=0.0,
        timeout=WEDGE_TIMEOUT,
        run_on_start=True,
        misfire="coalesce",
        description="leasectl drill: a tick the wedge fault blocks",
    )
