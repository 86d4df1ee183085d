"""agent_health: mark Online agents Offline when their heartbeat is older than the threshold.

One tick is one guarded ``UPDATE leasectl_certs.agents SET status = 'Offline' WHERE status =
'Online' AND last_heartbeat_at < now() - agents.offline_after``. The threshold is its own
setting (default 5 min), not the tick interval as in certctl, so a heartbeat every 60 s
survives a late tick.

Why ``everywhere`` is safe: the statement is idempotent (a second replica finds nothing left to
change) and writes only the status, so it never overwrites a concurrent heartbeat.
"""

from __future__ import annotations

from leasectl.certs._common import everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("agent_health", package="leasectl.certs.sql")

NAME = "agent_health"
TIMEOUT = 60.0


def run(ctx: TickContext) -> None:
    """One tick: the guarded UPDATE; how many went Offline is counted."""
    settings: LoopsSettings = ctx.config
    with transaction(ctx) as cur:
        cur.execute(Q["mark_offline"], {"seconds": float(settings.agents.offline_after)})
        gone = [row["id"] for row in cur.fetchall()]
    if gone:
        ctx.log.info("agents marked offline: %s", ", ".join(gone))
    ctx.count("marked_offline", len(gone))


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.agents.check.enabled`` is false."""
    return everywhere(
        NAME,
        settings.agents.check,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="Online agents with a stale heartbeat become Offline",
    )
