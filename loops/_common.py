"""Small helpers the everywhere-loops share: one transaction on the tick's pool, timeouts.

Private to ``loops``: each loop opens short transactions through :func:`transaction` so a
connection goes back to the pool between items, and no transaction stays open across a network
call (the pool's ``idle_in_transaction_session_timeout`` would kill it, and it would hold locks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from leasectl.certs.settings import LoopToggle
from leasectl.errors import DatabaseUnavailable
from leasectl.loop import LoopSpec, TickContext

#: Actor type written to ``audit_events`` by every loop.
ACTOR_TYPE = "System"


@contextmanager
def transaction(ctx: TickContext) -> Iterator[psycopg.Cursor[DictRow]]:
    """A dict-row cursor in one transaction: committed on success, rolled back on error."""
    with ctx.pool.connection() as conn, conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            yield cur


def within_limit(ctx: TickContext, name: str, scope: str | None = None, wait: float = 0.0) -> bool:
    """Whether the cluster-wide rate limit ``limits.<name>`` lets one side effect go now.

    Fail closed: when the limit cannot be checked (database unreachable) the answer is no, and
    the caller defers the side effect exactly as it does for a throttled one.
    """
    try:
        return bool(ctx.limit(name, scope, wait=wait))
    except DatabaseUnavailable:
        return False


def email_domain(address: str) -> str | None:
    """The domain of an e-mail address, lower-cased: the ``smtp`` limit's scope."""
    return address.rpartition("@")[2].lower() or None


def actor(ctx: TickContext) -> str:
    """The ``audit_events.actor`` of this tick: which loop on which replica did it."""
    return f"leasectl:{ctx.loop}@{ctx.replica_id}"


def duration_label(seconds: float) -> str:
    """``86400`` → ``24h``, ``300`` → ``5m``, ``90`` → ``90s``: for error messages."""
    whole = int(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{seconds:g}s"


def schedule_of(toggle: LoopToggle) -> dict[str, Any]:
    """``LoopSpec`` keywords for a toggle's schedule: ``cron`` + ``tz`` when set (the
    interval then only stands for the typical gap), else ``interval``."""
    if toggle.cron:
        return {"interval": 0.0, "cron": toggle.cron, "tz": toggle.tz}
    return {"interval": toggle.interval}


def everywhere(
    name: str,
    toggle: LoopToggle,
    run: Callable[[TickContext], None],
    *,
    timeout: float,
    run_on_start: bool,
    description: str,
) -> LoopSpec | None:
    """The spec of an everywhere loop driven by a ``{enabled, interval}`` toggle; None if off."""
    if not toggle.enabled:
        return None
    return LoopSpec(
        name=name,
        **schedule_of(toggle),
        placement="everywhere",
        run=run,
        timeout=timeout,
        run_on_start=run_on_start,
        description=description,
    )
