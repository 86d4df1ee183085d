"""session_gc: delete expired sessions and abandoned pre-login sessions.

One tick is one ``DELETE FROM leasectl_certs.sessions WHERE absolute_expires_at < now() OR
(is_pre_login AND created_at < now() - gc.pre_login_session_ttl)``.

Why ``everywhere`` is safe: a DELETE by predicate is idempotent; concurrent replicas delete
disjoint or already-deleted rows.
"""

from __future__ import annotations

from leasectl.certs._common import everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("session_gc", package="leasectl.certs.sql")

NAME = "session_gc"
TIMEOUT = 60.0


def run(ctx: TickContext) -> None:
    """One tick: the DELETE."""
    settings: LoopsSettings = ctx.config
    with transaction(ctx) as cur:
        cur.execute(
            Q["delete_sessions"], {"pre_login_seconds": float(settings.gc.pre_login_session_ttl)}
        )
        ctx.count("deleted", cur.rowcount)


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.gc.sessions.enabled`` is false."""
    return everywhere(
        NAME,
        settings.gc.sessions,
        run,
        timeout=TIMEOUT,
        run_on_start=False,
        description="expired and abandoned pre-login sessions are deleted",
    )
