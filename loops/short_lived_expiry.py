"""short_lived_expiry: expire short-lived certificates the moment they pass ``expires_at``.

One tick is one statement: an UPDATE of certificates whose profile is short-lived
(``allow_short_lived`` and ``0 < max_ttl_seconds < 3600``), status Active or Expiring and
``expires_at <= now()`` to Expired, with an ``INSERT ... SELECT ... FROM (UPDATE ... RETURNING)``
writing one ``short_lived_cert_expired`` audit row per certificate changed.

Why ``everywhere`` is safe: the status guard makes it idempotent; a row changed by one replica
no longer matches for the other, so each expiry is recorded once.
"""

from __future__ import annotations

from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("short_lived_expiry", package="leasectl.certs.sql")

NAME = "short_lived_expiry"
TIMEOUT = 30.0


def run(ctx: TickContext) -> None:
    """One tick: the guarded UPDATE with its audit rows."""
    with transaction(ctx) as cur:
        cur.execute(Q["expire_short_lived"], {"actor": actor(ctx)})
        ctx.count("expired", len(cur.fetchall()))


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.gc.short_lived_expiry.enabled`` is false."""
    return everywhere(
        NAME,
        settings.gc.short_lived_expiry,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="short-lived certificates past expires_at become Expired",
    )
