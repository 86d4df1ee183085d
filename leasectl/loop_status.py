"""What the status views add to the lease and loop read model: the recent lease and operator
events (a timeline), and which pause holds a loop back.

Part of the one read model behind ``leasectl status`` and the status page
(:func:`leasectl.status.read_cluster` composes it with the leases, the replicas, the loops'
run history and the rate-limit fill).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from leasectl import sql
from leasectl.loop_control import ALL, Pause

Q = sql.load("loop_status")


@dataclass(frozen=True)
class Event:
    """A lease or operator event (``leasectl_lease_events``)."""

    at: datetime
    lease: str
    epoch: int | None
    replica: str
    event: str
    reason: str
    age_s: float


def recent_events(conn: psycopg.Connection[Any], limit: int = 30) -> list[Event]:
    """The newest ``limit`` events, newest first."""
    return [
        Event(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6]))
        for r in conn.execute(Q["recent_events"], {"limit": limit}).fetchall()
    ]


def pause_of(pauses: Iterable[Pause], loop: str) -> Pause | None:
    """The pause in force for ``loop``: its own, else a pause of every loop (ended: ignored)."""
    active = {p.loop: p for p in pauses if not p.ended}
    return active.get(loop) or active.get(ALL)
