"""Which drill notifications the loops will still deliver, by when, and how late they were.

A notification that is not ``sent`` or ``dead`` when the rounds end is not lost yet if the
loops will still take it: ``pending`` goes out at the next ``notification_send`` tick, a
``sending`` row at the next tick of the lease that claimed it (an earlier tick's claim is
re-delivered with the same key), a ``failed`` one at its ``next_retry_at``. Each state has a
bound (:func:`fate`), the one docs/failover-drills.md gives; the drain waits for every open
row until it is final or past its bound (:class:`DrainWatch`), and only then is a row judged
lost. A row that can never go out (marked ``sent`` but never received, ``dead`` without a
reason, ``failed`` with no attempt left, missing) is lost at once.

Everything here is pure: states and the clock come in, so unit tests need no database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg

from leasectl import sql
from leasectl.certs.notify.dispatch import foreign_claim_after, tick_timeout
from leasectl.certs.settings import NotificationSettings
from leasectl.tools.drill.stats import summarize
from leasectl.tools.webhook_sink import Delivery

Q = sql.load("drill", package="leasectl.tools.drill")

SEND_LEASE = "notification_send"
RETRY_LEASE = "notification_retry"


@dataclass(frozen=True)
class Bounds:
    """The notification loops' timing, from the replicas' settings (seconds)."""

    send_every: float
    send_timeout: float
    retry_every: float
    retry_timeout: float
    foreign_after: float  # a row left 'sending' by a lease that is not one of the two loops'
    max_attempts: int

    @classmethod
    def from_settings(cls, ns: NotificationSettings) -> Bounds:
        return cls(
            send_every=ns.send.interval,
            send_timeout=tick_timeout(ns, "send"),
            retry_every=ns.retry.interval,
            retry_timeout=tick_timeout(ns, "retry"),
            foreign_after=foreign_claim_after(ns),
            max_attempts=ns.max_attempts,
        )

    def cap(self) -> float:
        """The longest the drain may wait for notifications at all: every attempt's bound,
        and a claim of another lease (a row cannot make progress for ever)."""
        attempt = self.send_every + self.send_timeout + self.retry_every + self.retry_timeout
        return self.foreign_after + (self.max_attempts + 1) * attempt


@dataclass(frozen=True)
class NoteState:
    """One notification row as the database has it now (ages on the database's clock)."""

    id: str
    status: str
    has_error: bool = False
    retry_count: int = 0
    claimed_lease: str | None = None
    claimed_age: float | None = None  # seconds since claimed_at
    retry_in: float | None = None  # seconds until next_retry_at (negative: due)

    @property
    def key(self) -> tuple[str, int, str | None]:
        """What changes when the loops make progress on the row (a new deadline then)."""
        return (self.status, self.retry_count, self.claimed_lease)


@dataclass(frozen=True)
class Fate:
    """``final`` (sent or dead), ``due`` within ``within`` seconds, or ``never`` (why)."""

    kind: Literal["final", "due", "never"]
    within: float = 0.0
    why: str = ""


def fate(s: NoteState, b: Bounds) -> Fate:
    """What the loops will still do with a row, and within how many seconds from now.

    A tick that is running may take up to its timeout before the next one starts, so each
    bound is one loop interval plus one tick timeout after the moment the row becomes
    takeable (now; its ``next_retry_at``; or, for another lease's claim, ``foreign_after``
    after the claim).
    """
    send = b.send_every + b.send_timeout
    retry = b.retry_every + b.retry_timeout
    if s.status == "sent":
        return Fate("final")
    if s.status == "dead":
        return Fate("final") if s.has_error else Fate("never", why="dead without a reason")
    if s.status == "pending":
        return Fate("due", send)
    if s.status == "sending":
        if s.claimed_lease == SEND_LEASE:
            return Fate("due", send)
        if s.claimed_lease == RETRY_LEASE:
            return Fate("due", retry)
        waited = s.claimed_age or 0.0
        return Fate("due", max(0.0, b.foreign_after - waited) + min(send, retry))
    if s.status == "failed":
        if s.retry_count >= b.max_attempts:
            return Fate("never", why=f"failed with no attempt left ({s.retry_count})")
        return Fate("due", max(0.0, s.retry_in or 0.0) + retry)
    return Fate("never", why=f"status {s.status!r}, which no loop takes")


class DrainWatch:
    """The drain's patience: each open row is waited for until its bound has passed.

    A row's deadline is set when it is first seen in a state and kept while it stays there;
    progress (a claim, a failed attempt) gives it a new one, which cannot go on for ever: a
    row has ``max_attempts`` attempts. ``now`` is any monotonic clock.
    """

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._seen: dict[str, tuple[tuple[str, int, str | None], float]] = {}
        self.never: dict[str, str] = {}

    def update(self, states: Iterable[NoteState], now: float) -> float | None:
        """Take the open rows' states; return the seconds still worth waiting (None: none)."""
        latest: float | None = None
        open_ids = set()
        for s in states:
            f = fate(s, self.bounds)
            if f.kind == "final":
                continue
            open_ids.add(s.id)
            if f.kind == "never":
                self.never[s.id] = f.why
                continue
            self.never.pop(s.id, None)
            seen = self._seen.get(s.id)
            if seen is None or seen[0] != s.key:
                seen = (s.key, now + f.within)
                self._seen[s.id] = seen
            if seen[1] > now:
                latest = max(latest or 0.0, seen[1] - now)
        for gone in set(self._seen) - open_ids:
            del self._seen[gone]
        return latest

    def overdue(self, now: float) -> list[str]:
        """Open rows whose bound has passed (lost, if the drain ends now)."""
        return sorted(i for i, (_k, at) in self._seen.items() if at <= now)

    def still_due(self, now: float) -> list[str]:
        """Open rows still within their bound (not judged: the drain was cut short)."""
        return sorted(i for i, (_k, at) in self._seen.items() if at > now)


def first_deliveries(deliveries: Iterable[Delivery]) -> dict[str, float]:
    """Idempotency key -> arrival of its first accepted, signed delivery."""
    first: dict[str, float] = {}
    for d in deliveries:
        if d.status == 200 and d.verified and d.key and (d.key not in first or d.at < first[d.key]):
            first[d.key] = d.at
    return first


def delays_by_kind(
    inserted_at: Mapping[str, float],
    delivered_at: Mapping[str, float],
    faults: Sequence[tuple[float, str]],
    since: float = 0.0,
) -> dict[str, dict[str, float | None | str]]:
    """Per fault kind: delivery delay percentiles (insert acknowledged -> first delivery) and
    the slowest notification's id.

    A notification counts against the last fault before its delivery (the one it waited
    through, or whose aftermath it was inserted in); one delivered before the first fault
    counts under ``none``. ``faults`` are (instant, kind), on the clock of both maps. The
    delay runs from ``since`` (the cluster is up) for rows inserted before it: the feed
    starts with the replicas, and their start-up is not a fault's delay.
    """
    ordered = sorted(faults)
    delays: dict[str, list[tuple[float, str]]] = {}
    for key, at in delivered_at.items():
        start = inserted_at.get(key)
        if start is None:
            continue
        start = max(start, since)
        kind = "none"
        for t, k in ordered:
            if t <= at:
                kind = k
            else:
                break
        delays.setdefault(kind, []).append((max(0.0, at - start), key))
    out: dict[str, dict[str, float | None | str]] = {}
    for kind, pairs in delays.items():
        row: dict[str, float | None | str] = dict(summarize([d for d, _ in pairs]))
        row["slowest"] = max(pairs)[1]
        row["n"] = len(pairs)
        out[kind] = row
    return out


def read_open(dsn: str, prefix: str) -> list[NoteState] | None:
    """The drill's notifications not yet ``sent`` or ``dead``; None if the server is away."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(Q["notifications_open_states"], {"prefix": prefix + "%"})
            return [NoteState(*row) for row in rows.fetchall()]
    except psycopg.OperationalError:
        return None
