"""Loops as the database sees them: last run, pause, wedged; and the recent event timeline.

Part of the one read model behind ``leasectl status`` and the status page
(:func:`leasectl.status.read_cluster` composes it). Pure where it can be: the queries return
rows, :func:`loops` turns them and the replicas' rows into :class:`LoopStatus`.

Run history is whatever the tick ledger records (leased loops only; everywhere loops keep no
ledger). The views read a loop through the attributes issue 18's run history (``LoopHistory``:
``loop``, ``placement``, ``last`` with ``replica``/``tick_at``/``started_at``/``seconds``/
``outcome``/``error``, ``next_fire_at``, ``wedged_on``) also has, and a loop's pause through
:func:`pause_of` from the pause rows, so that model can replace :class:`LoopStatus` without
changing either view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from leasectl import sql
from leasectl.control import ALL, Pause

Q = sql.load("loop_status")


@dataclass(frozen=True)
class LastRun:
    """A loop's latest ledger row."""

    tick_at: datetime
    replica: str
    epoch: int
    outcome: str  # running | ok | failed | lost | cancelled
    seconds: float  # so far, while running
    error: str | None
    triggered: bool
    started_at: datetime


@dataclass(frozen=True)
class LoopStatus:
    """One loop across the cluster."""

    loop: str
    placement: str  # leased | everywhere
    replicas: tuple[str, ...]  # live replicas that run it (leased: that may hold it)
    last: LastRun | None = None
    next_fire_at: datetime | None = None  # when the schedule is known to the reader
    wedged_on: tuple[str, ...] = ()


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


def last_runs(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, LastRun]:
    out = {}
    for name, tick_at, replica, epoch, outcome, secs, error, triggered, started in conn.execute(
        Q["last_runs"], {"names": list(names)}
    ).fetchall():
        if tick_at is not None:
            out[name] = LastRun(
                tick_at, replica, int(epoch), outcome, float(secs), error, bool(triggered), started
            )
    return out


def recent_events(conn: psycopg.Connection[Any], limit: int = 30) -> list[Event]:
    return [
        Event(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6]))
        for r in conn.execute(Q["recent_events"], {"limit": limit}).fetchall()
    ]


def pause_of(pauses: Iterable[Pause], loop: str) -> Pause | None:
    """The pause in force for ``loop``: its own, else a pause of every loop (ended: ignored)."""
    active = {p.loop: p for p in pauses if not p.ended}
    return active.get(loop) or active.get(ALL)


def loops(
    leases: Iterable[str],
    replicas: Iterable[tuple[str, Iterable[str], Iterable[str], bool]],
    last: Mapping[str, LastRun],
    next_fire: Mapping[str, datetime] | None = None,
) -> list[LoopStatus]:
    """Pure: every loop a live replica runs or a lease names.

    :param replicas: ``(id, loops, wedged, alive)`` per replica.
    """
    leased = set(leases)
    runs: dict[str, list[str]] = {name: [] for name in leased}
    wedged: dict[str, list[str]] = {}
    for rid, names, stuck, alive in replicas:
        for name in names:
            bucket = runs.setdefault(name, [])
            if alive:
                bucket.append(rid)
        for name in stuck:
            wedged.setdefault(name, []).append(rid)
    fires = next_fire or {}
    return [
        LoopStatus(
            loop=name,
            placement="leased" if name in leased else "everywhere",
            replicas=tuple(runs[name]),  # in the replicas' order (by id)
            last=last.get(name),
            next_fire_at=fires.get(name),
            wedged_on=tuple(wedged.get(name, ())),
        )
        for name in sorted(runs)
    ]
