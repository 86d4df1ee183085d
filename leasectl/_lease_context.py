"""What the lease manager's shells share: the replica's identity, its decision core, the
lock that guards it, the events and the wake-up pipe, queued commands and listeners.

:class:`leasectl.lease_manager.LeaseManager` builds one :class:`Shared` and hands it to its
three shells: the lock-session loop (:mod:`leasectl._lease_loop`), the watch ring
(:mod:`leasectl._watch_ring`) and the pooled standby observer
(:mod:`leasectl._standby_observer`). The decisions are in :mod:`leasectl.lease_core`; this
module only holds what several of them touch, and the safety check both the lock loop and
the observer's start run on a lock session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leasectl import control, timing
from leasectl._version import __version__
from leasectl.errors import SafetyInequalityViolated
from leasectl.lease_core import LeaseCore
from leasectl.leases import Clock, LeaseEvent
from leasectl.locks import Drain, LeaseSession
from leasectl.runtime import Runtime
from leasectl.settings import CoreSettings

log = logging.getLogger("leasectl.leases")

#: A command for the manager thread, run with its lock session (step-down, abandon, a report).
Command = Callable[[LeaseSession], None]


@dataclass(frozen=True)
class Identity:
    """What a replica publishes about itself in its row, besides its candidacy."""

    replica_id: str
    may_lead: bool
    loops: list[str]
    labels: tuple[str, ...]
    preferred_for: list[str]
    declared: list[str]


class Shared:
    """The state the shells share, and the few helpers all of them call."""

    def __init__(
        self,
        identity: Identity,
        settings: CoreSettings,
        runtime: Runtime,
        clock: Clock,
        core: LeaseCore,
    ) -> None:
        self.identity = identity
        self.replica_id = identity.replica_id
        self.settings = settings
        self.runtime = runtime
        self.clock = clock
        self.core = core
        self.lock = threading.RLock()  # guards core: the scheduler's threads read it too
        self.waker = runtime.waker()
        self.stop = runtime.event()
        self.stopped = runtime.event()
        self.connected = runtime.event()
        self.commands: list[Command] = []
        self.listeners: list[Callable[[LeaseEvent], None]] = []
        self.control_listeners: list[Callable[[control.LoopControlChanged], None]] = []
        self.exit_listeners: list[Callable[[], None]] = []
        self.fatal: BaseException | None = None
        self.d_srv: float | None = None
        self.last_heartbeat_ok: float | None = None

    def command(self, fn: Command) -> None:
        """Queue ``fn`` for the manager thread and wake it."""
        with self.lock:
            self.commands.append(fn)
        self.waker.wake()

    def identity_row(self, candidacy: list[str]) -> dict[str, Any]:
        """What this replica publishes in its row, as its lock session registers it and as a
        standby's poll stamps it: the same fields both ways."""
        ident = self.identity
        return {
            "host": self.runtime.host,
            "pid": self.runtime.pid,
            "version": __version__,
            "may_lead": ident.may_lead,
            "loops": ident.loops,
            "labels": ident.labels,
            "campaigns_for": candidacy,
            "preferred_for": ident.preferred_for,
        }

    def candidacy(self) -> list[str]:
        """The leases this replica campaigns for now."""
        now = self.clock()
        with self.lock:
            return self.core.candidacy(now)

    def drain(self, drain: Drain) -> None:
        """``step-down --replica`` <this one>, read from its row (by a standby's poll, or as
        its lock session registers) some time after it was asked: stay away from every lease
        for what is left of the cooldown (a lock session hears the request as a NOTIFY)."""
        with self.lock:
            left = self.core.drain(drain, self.clock())
        if left is not None:
            log.info(
                "step-down requested for this replica: staying away from every lease for %.0fs",
                left,
                extra={"action": "step_down", "replica": self.replica_id},
            )

    def emit(self, event: LeaseEvent) -> None:
        for fn in self.listeners:
            try:
                fn(event)
            except Exception:
                log.exception("lease listener failed", extra={"action": "listener_error"})

    def exited(self) -> None:
        for fn in self.exit_listeners:
            try:
                fn()
            except Exception:
                log.exception("exit listener failed", extra={"action": "listener_error"})

    def check_lock_session(self, session: LeaseSession) -> None:
        """The safety inequality on the lock session's TCP settings as read back, and a
        warning when it goes through a session-mode pooler (a transaction-mode one is refused
        when it connects)."""
        assert session.tcp is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        self.d_srv = session.tcp.d_srv
        problem = timing.inequality_violation(self.settings.leases, session.tcp)
        if problem is not None:
            raise SafetyInequalityViolated(problem)
        if session.via_pooler:
            log.warning(
                "the lock connection goes through a (session-mode) pooler: the TCP settings "
                "read back bound the pooler's link to PostgreSQL, not this replica's; make "
                "sure the pooler drops a silent client within D_srv (see docs/safety.md)",
                extra={"action": "safety_check", "replica": self.replica_id},
            )
        if self.d_srv is None:
            log.info(
                "lock connection uses a Unix socket: no partition possible, D_srv check exempt",
                extra={"action": "safety_check", "replica": self.replica_id},
            )
