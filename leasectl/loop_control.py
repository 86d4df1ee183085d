"""Operator control of loops at runtime: pause, resume, trigger, cluster-wide and persistent.

The state is rows (``leasectl_loop_pauses``, ``leasectl_loop_triggers``, migration 0014), so a
pause holds across restarts and for replicas that start later. An action writes its row,
records who/when/why in ``leasectl_lease_events`` and NOTIFYs ``loop_control`` on the control
channel (:class:`leasectl.control.LoopControlChanged`); every lock session hears it and its
replica re-reads the rows at once. A replica
that misses the NOTIFY (a pooled standby, one without a lock session, one reconnecting) reads
them at its next poll, every ``scheduler.control_poll_interval`` seconds.

Guarantees the scheduler builds on (see :class:`LoopControl`):

- a paused loop starts no tick (a leased one keeps its lease); a running tick finishes, or
  with ``--now`` is told to stop through ``ctx.check()``;
- a trigger of a leased loop runs one extra tick on the holder, claimed under the fence in
  the same statement that records it in the tick ledger: at most once across the cluster,
  even while the lease moves; a trigger of an everywhere loop runs once on every replica
  that was running when it was asked for.

The operator functions (:func:`pause`, :func:`resume`, :func:`trigger`) take a connection;
the CLI (``leasectl loop``) and the :class:`~leasectl.app.App` both call them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from leasectl import metrics, sql
from leasectl.control import LoopControlChanged, encode
from leasectl.errors import ConfigError
from leasectl.locks import notify_control

log = logging.getLogger("leasectl.loop_control")
Q = sql.load("loop_control")

#: The pause row that pauses every loop (``leasectl loop pause --all``).
ALL = "*"


@dataclass(frozen=True)
class Pause:
    """A pause in force (or ended by its ``resume_at``, when read for status)."""

    loop: str  # or ALL
    paused_at: datetime
    paused_by: str
    reason: str
    stop_now: bool = False
    resume_at: datetime | None = None
    age_s: float = 0.0
    ended: bool = False


@dataclass(frozen=True)
class Trigger:
    """One requested extra tick."""

    id: int
    loop: str
    requested_at: datetime
    requested_by: str
    reason: str = ""


class UnknownLoop(ConfigError):
    """A loop name the cluster does not know; ``known`` lists the names it does."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        listed = ", ".join(known) if known else "none (no replica has registered yet)"
        super().__init__(f"unknown loop {name!r}; the cluster knows: {listed}")


# -- operator actions ---------------------------------------------------------------------


def known_loops(conn: psycopg.Connection[Any]) -> list[str]:
    """Loop names the cluster knows (from the replicas' rows, not a local configuration)."""
    return [str(r[0]) for r in conn.execute(Q["known_loops"]).fetchall()]


def _check_known(conn: psycopg.Connection[Any], name: str) -> None:
    if name == ALL:
        return
    known = known_loops(conn)
    if name not in known:
        raise UnknownLoop(name, known)


def _audit(
    conn: psycopg.Connection[Any], loop: str, by: str, event: str, reason: str, **extra: Any
) -> None:
    conn.execute(Q["record_event"], {"loop": loop, "by": by, "event": event, "reason": reason})
    notify_control(conn, encode(LoopControlChanged(loop, event)))
    log.info(
        "%s %s by %s%s",
        event.replace("_", " "),
        "every loop" if loop == ALL else f"loop {loop}",
        by,
        f": {reason}" if reason else "",
        extra={"action": event, "loop": loop, "by": by, "reason": reason, **extra},
    )


def pause(
    conn: psycopg.Connection[Any], name: str, *, by: str, reason: str = "", now: bool = False
) -> None:
    """Pause ``name`` (:data:`ALL`: every loop) cluster-wide until resumed.

    :param now: also tell a running tick to stop (``ctx.check()`` raises); else it finishes.
    :raises UnknownLoop: the cluster knows no loop of that name.
    """
    _check_known(conn, name)
    with conn.transaction():
        conn.execute(Q["pause"], {"loop": name, "by": by, "reason": reason, "now": now})
        _audit(conn, name, by, "loop_paused", reason + (" (--now)" if now else ""))


def resume(
    conn: psycopg.Connection[Any], name: str, *, by: str, at: datetime | None = None
) -> Pause | None:
    """End the pause of ``name`` now, or at ``at``; the pause that ends (None: not paused)."""
    with conn.transaction():
        query = Q["resume_now"] if at is None else Q["resume_at"]
        row = conn.execute(query, {"loop": name, "at": at}).fetchone()
        if row is None:
            if name != ALL:
                _check_known(conn, name)
            return None
        when = "" if at is None else f"at {at.isoformat()}"
        _audit(conn, name, by, "loop_resumed", when)
    return Pause(name, row[0], row[1], row[2], resume_at=at, age_s=float(row[3]))


def trigger(conn: psycopg.Connection[Any], name: str, *, by: str, reason: str = "") -> int:
    """Ask for one extra tick of ``name`` as soon as possible; the trigger's id."""
    _check_known(conn, name)
    with conn.transaction():
        row = conn.execute(Q["trigger"], {"loop": name, "by": by, "reason": reason}).fetchone()
        assert row is not None  # noqa: S101 - INSERT ... RETURNING always returns its row
        _audit(conn, name, by, "loop_triggered", reason, trigger=int(row[0]))
    return int(row[0])


def read_pauses(conn: psycopg.Connection[Any]) -> list[Pause]:
    """Every pause row (for status), ended ones flagged."""
    return [
        Pause(r[0], r[1], r[2], r[3], bool(r[4]), r[5], float(r[6]), bool(r[7]))
        for r in conn.execute(Q["pauses"]).fetchall()
    ]


# -- the replica side ---------------------------------------------------------------------


class LoopControl:
    """This replica's view of the pause and trigger rows, refreshed by one thread.

    It polls every ``poll_interval`` seconds, at once after :meth:`poke` (the lease manager
    calls it when a ``loop_control`` NOTIFY arrives) and when a ``resume_at`` passes.
    Listeners get the names whose state changed (``ALL`` among them for ``pause --all``) and
    the names newly paused with ``--now``. The scheduler asks :meth:`paused` and
    :meth:`pending_trigger` before each tick.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        leased: Iterable[str],
        everywhere: Iterable[str],
        poll_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.leased = sorted(leased)
        self.everywhere = sorted(everywhere)
        self.poll_interval = poll_interval
        self.clock, self.wall = clock, wall
        self._pauses: dict[str, Pause] = {}
        self._triggers: dict[str, list[Trigger]] = {}
        self._after: int | None = None  # everywhere triggers: the last id already seen
        self._done: set[int] = set()
        self._lock = threading.Lock()
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._listeners: list[Callable[[set[str], set[str]], None]] = []
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()  # the first poll succeeded

    def add_listener(self, fn: Callable[[set[str], set[str]], None]) -> None:
        self._listeners.append(fn)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="leasectl-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def poke(self, message: Any = None) -> None:
        """Poll now (a ``loop_control`` message on the control channel)."""
        self._poke.set()

    def paused(self, name: str) -> Pause | None:
        """The pause that holds ``name`` back now (its own, else a pause of every loop)."""
        with self._lock:
            return self._pauses.get(name) or self._pauses.get(ALL)

    def pending_trigger(self, name: str) -> Trigger | None:
        """The oldest trigger of ``name`` this replica has still to run or claim."""
        with self._lock:
            pending = [t for t in self._triggers.get(name, ()) if t.id not in self._done]
        return pending[0] if pending else None

    def done(self, trigger: Trigger) -> None:
        """``trigger`` was run or claimed here (or elsewhere): never offer it again."""
        with self._lock:
            self._done.add(trigger.id)
            if trigger.loop in self.everywhere:
                # Poll from just below the oldest everywhere trigger not run yet: each is
                # offered until it ran here, and the poll does not grow with old ones.
                waiting = [
                    t.id
                    for n in self.everywhere
                    for t in self._triggers.get(n, ())
                    if t.id not in self._done
                ]
                self._after = max(self._after or 0, min(waiting) - 1 if waiting else trigger.id)

    # -- polling ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poke.wait(self._next_poll())
            self._poke.clear()
            if not self._stop.is_set():
                self.refresh()

    def _next_poll(self) -> float:
        """The poll interval, or less when a pause ends by itself sooner."""
        wait = self.poll_interval
        with self._lock:
            for p in self._pauses.values():
                if p.resume_at is not None:
                    wait = min(wait, max(p.resume_at.timestamp() - self.wall(), 0.0) + 0.05)
        return wait

    def refresh(self) -> bool:
        """Read the rows now and tell listeners what changed; False when the read failed (the
        last known state stays: a database outage does not resume every loop)."""
        after = self._after if self._after is not None else 2**62
        try:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    Q["poll"],
                    {"leased": self.leased, "everywhere": self.everywhere, "after": after},
                ).fetchall()
        except psycopg.Error as exc:
            log.warning(
                "cannot read the loop pauses and triggers: %s",
                str(exc).strip(),
                extra={"action": "control_poll_failed"},
            )
            return False
        pauses: dict[str, Pause] = {}
        triggers: dict[str, list[Trigger]] = {}
        newest = 0
        for kind, tid, loop, at, who, reason, stop_now, resume_at, _ in rows:
            if kind == "pause":
                pauses[loop] = Pause(loop, at, who, reason, bool(stop_now), resume_at)
            elif kind == "trigger":
                triggers.setdefault(loop, []).append(Trigger(int(tid), loop, at, who, reason))
            else:
                newest = int(tid)
        for pending in triggers.values():
            pending.sort(key=lambda t: t.id)
        with self._lock:
            before_p, before_t = self._pauses, self._triggers
            self._pauses, self._triggers = pauses, triggers
            if self._after is None:
                self._after = newest  # everywhere triggers asked before we started are not ours
            offered = {t.id for ts in triggers.values() for t in ts}
            self._done &= offered  # claimed or passed: the poll no longer returns them
        changed = {n for n in set(before_p) | set(pauses) if before_p.get(n) != pauses.get(n)}
        changed |= {n for n in set(before_t) | set(triggers) if before_t.get(n) != triggers.get(n)}
        stop_now = {n for n in changed if n in pauses and pauses[n].stop_now}
        self._export(pauses)
        self.loaded.set()
        if changed:
            for fn in self._listeners:
                try:
                    fn(changed, stop_now)
                except Exception:
                    log.exception("control listener failed", extra={"action": "listener_error"})
        return True

    def _export(self, pauses: dict[str, Pause]) -> None:
        every = pauses.get(ALL)
        for name in self.leased + self.everywhere:
            p = pauses.get(name) or every
            metrics.LOOP_PAUSED_SINCE.labels(name).set(p.paused_at.timestamp() if p else 0)
