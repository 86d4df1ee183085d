"""Retention of the tick ledger: a built-in everywhere loop deletes what is older than
``scheduler.ledger_retention``.

Unpruned, a 5 s loop adds about 6.3 million ledger rows a year. Every replica runs the loop
(an idempotent DELETE in batches); a loop's latest handled slot is always kept, whatever its
age, since it is what tells a new holder which slots are done.
"""

from __future__ import annotations

from leasectl import sql
from leasectl.loop import LoopSpec, TickContext

Q = sql.load("ledger")

#: Rows deleted per statement: short transactions, and ``ctx.check()`` between them.
BATCH = 5000

NAME = "ledger_retention"


def retention_loop(keep_s: float) -> LoopSpec:
    """The built-in loop that keeps the ledger within ``keep_s`` seconds of history.

    It runs every tenth of the retention (at least every second, at most every 10 min), so
    the ledger never holds much more than ``1.1 * keep_s`` of history.
    """

    def prune(ctx: TickContext) -> None:
        params = {"keep_s": keep_s, "batch": BATCH}
        while True:
            ctx.check()
            with ctx.transaction() as cur:
                deleted = cur.execute(Q["prune_ticks"], params).rowcount
            ctx.count("deleted", deleted)
            if deleted < BATCH:
                break
        with ctx.transaction() as cur:
            ctx.count("runs_deleted", cur.execute(Q["prune_runs"], params).rowcount)

    return LoopSpec(
        name=NAME,
        interval=min(600.0, max(1.0, keep_s / 10)),
        placement="everywhere",
        run=prune,
        run_on_start=False,
        timeout=300.0,
        description="delete tick-ledger rows older than scheduler.ledger_retention",
    )
