"""acme_gc: delete used or expired ACME nonces, expire stale authorizations and orders.

One tick runs three independent statements (each its own transaction, so one failing does not
undo the others; the first error is raised after all three ran):
``DELETE FROM leasectl_certs.acme_nonces WHERE used OR expires_at < now()``; pending
authorizations past ``expires_at`` become ``expired``; pending/ready/processing orders past
``expires_at`` become ``invalid`` with an ACME ``serverInternal`` error document. Unlike
certctl (defect #1, the loop was wired after the scheduler started and never ran) this loop is
started like every other.

Why ``everywhere`` is safe: each statement is idempotent and guarded by the state it changes.
"""

from __future__ import annotations

from leasectl.certs._common import everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("acme_gc", package="leasectl.certs.sql")

NAME = "acme_gc"
TIMEOUT = 60.0


def run(ctx: TickContext) -> None:
    """One tick: the three statements; counts go to the tick's stats."""
    first_error: Exception | None = None
    for query in ("delete_nonces", "expire_authorizations", "invalidate_orders"):
        try:
            with transaction(ctx) as cur:
                cur.execute(Q[query])
                ctx.count(query, cur.rowcount)
        except Exception as exc:  # noqa: BLE001 - run the other statements, raise the first
            ctx.log.warning("acme_gc %s failed: %s", query, exc)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.gc.acme.enabled`` is false."""
    return everywhere(
        NAME,
        settings.gc.acme,
        run,
        timeout=TIMEOUT,
        run_on_start=False,
        description="ACME nonces, authorizations and orders garbage collection",
    )
