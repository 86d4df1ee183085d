"""The watch ring: each replica waits on one peer's liveness lock, so a crash is heard at once.

Every replica (spread placement, direct standby) holds a *liveness lock* on its lock
connection and watches one peer's, its successor in the sorted ring of live replicas
(:meth:`leasectl.lease_core.LeaseCore.watch_target`), from a second connection
(:class:`leasectl.locks.WatchSession`) on the ``leasectl-watch`` thread. The server wakes the
watcher the instant the peer's session ends (a crash, a kill, an eviction, a partition
dropped at D_srv) and the same statement NOTIFYs ``replica_gone`` to every replica
(docs/safety.md, "The watch connection"). This module is the thread and its re-aiming; it
decides nothing about leases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from leasectl._lease_context import Shared
from leasectl.errors import LeasectlError
from leasectl.locks import PeerWatch

log = logging.getLogger("leasectl.leases")

#: The watch connection's lock_timeout: how long one server-side wait lasts before it is
#: re-issued. It bounds what the wait can cost others (a snapshot held, a CREATE INDEX
#: CONCURRENTLY kept waiting) and costs one statement per period: 0.5 statements/s.
WATCH_LOCK_TIMEOUT = 2.0


class WatchRing:
    """The ``leasectl-watch`` thread's target and its wait (:meth:`run`)."""

    def __init__(self, shared: Shared, factory: Callable[[], PeerWatch]) -> None:
        self._s = shared
        self._factory = factory
        self._cv = shared.runtime.condition()
        self._target: str | None = None
        self._gen = 0  # bumped with every new target or view
        self._skip: tuple[str, int] | None = None  # (peer, gen): its lock was free
        self._watching: PeerWatch | None = None

    def aim(self, target: str | None) -> None:
        """A new view: watch ``target`` (None: nobody); a peer whose lock was free is tried
        again."""
        with self._cv:
            self._gen += 1
            if target == self._target:
                self._cv.notify_all()
                return
            self._target = target
            busy = self._watching
            self._cv.notify_all()
        if busy is not None:
            # Waiting on the old peer: re-aim now, not after lock_timeout. Off this thread:
            # cancel_safe opens a connection to the server, and the caller (the manager
            # thread, handling a peer's replica_gone) is about to campaign for its leases.
            self._s.runtime.spawn(busy.cancel, "leasectl-watch-cancel")

    def stop(self) -> None:
        """Stop watching (the manager is stopping): the wait in progress is cancelled."""
        with self._cv:
            self._target = None
            busy = self._watching
            self._cv.notify_all()
        if busy is not None:
            busy.cancel()

    def _next(self, watch: PeerWatch | None) -> tuple[str | None, int, PeerWatch | None]:
        """Wait for a peer to watch (None: stopping); closes ``watch`` while alone."""
        s = self._s
        while True:
            with self._cv:
                # Checked again under the condition's lock: stop() sets the stop event
                # before it takes this lock to notify, so a stop between the loop test and
                # here is seen now instead of leaving this thread in wait() for good (stop()
                # then waited its whole join timeout before the process could exit).
                if s.stop.is_set() or s.stopped.is_set():
                    return None, 0, watch
                target, gen = self._target, self._gen
                if target is not None and self._skip != (target, gen):
                    return target, gen, watch
                if target is None and watch is not None:
                    watch.close()  # alone: no second connection
                    watch = None
                self._cv.wait()

    def run(self) -> None:
        """The ``leasectl-watch`` thread: wait on the target peer's liveness lock, re-issued
        every lock_timeout; the server wakes it when the peer's session ends, and the same
        statement tells every replica (``replica_gone``)."""
        s = self._s
        backoff = 0.1
        watch: PeerWatch | None = None
        try:
            while not s.stop.is_set() and not s.stopped.is_set():
                target, gen, watch = self._next(watch)
                if target is None:
                    break
                if watch is None:
                    try:
                        watch = self._factory()
                        backoff = 0.1
                    except LeasectlError as exc:
                        log.warning(
                            "watch connection unavailable, retrying in %.1fs: %s",
                            backoff,
                            str(exc).splitlines()[0],
                            extra={"action": "watch_reconnect", "replica": s.replica_id},
                        )
                        s.stop.wait(backoff * s.runtime.uniform(0.8, 1.2))
                        backoff = min(backoff * 2, s.settings.leases.reconnect_max_backoff)
                        continue
                watch = self._wait_on(watch, target, gen)
        except BaseException:
            log.exception("watch thread crashed", extra={"action": "watch_crashed"})
        finally:
            if watch is not None:
                watch.close()

    def _wait_on(self, watch: PeerWatch, target: str, gen: int) -> PeerWatch | None:
        """One wait on ``target``'s liveness lock; returns the connection (None: lost)."""
        with self._cv:
            if self._target != target:
                return watch
            self._watching = watch
        try:
            ended = watch.watch(target)
        except LeasectlError as exc:
            log.warning(
                "watch connection lost: %s",
                str(exc).splitlines()[0],
                extra={"action": "watch_reconnect", "replica": self._s.replica_id},
            )
            watch.close()
            return None
        finally:
            with self._cv:
                self._watching = None
        if ended is False:
            with self._cv:
                self._skip = (target, gen)  # not held: retry on the next view
        elif ended:
            log.info(
                "replica %s's lock session ended; told every replica",
                target,
                extra={"action": "replica_gone", "replica": self._s.replica_id, "holder": target},
            )
            with self._cv:
                self._skip = (target, gen)  # until a view without it
        return watch
