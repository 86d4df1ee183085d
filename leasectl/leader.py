"""Leases without loops: hold a lease around a block, or run a function while leading.

:Status: Beta

Guarantee
    The same lease as a leased loop's (session advisory lock + fencing epoch, placement,
    step-down, eviction, status, metrics): at most one replica believes it holds ``name`` at
    any instant, under the safety inequality of :mod:`leasectl.leases`. A block or a leader
    function that writes to the database does so through ``lease.transaction()``, which
    commits only while its epoch is current; a superseded holder's writes are refused.

Limits
    Belief is not a stop button. A leader function is *told* to stop (``lease.done`` is set,
    an ``async`` one is cancelled) when its lease is lost, released or the App stops; one that
    ignores it keeps running with a dead lease, and only its fenced writes are safe. An
    ``async`` leader function runs on the App's one event-loop thread, beside the async loops'
    ticks: it writes with ``async with lease.atransaction()`` and must never block. Names
    are declared before :meth:`App.start`: the lease manager campaigns for a fixed set.

Example::

    app = App()
    orders = app.lease("orders-migration")          # declared; campaigned for only in a block

    @app.leader("partner-poller")                   # runs on one replica at a time
    def poll(lease: LeaseHandle) -> None:
        while not lease.done.wait(5):
            with lease.transaction() as cur:        # fenced by lease.epoch
                cur.execute("INSERT INTO seen ...")

    with app, orders as lease:                      # waits until this replica holds it
        migrate_orders(lease)                       # leaving the block releases (NOTIFY)

The shape is client-go's ``RunOrDie``: ``OnStartedLeading`` is the function starting (and
:meth:`App.on_acquired`), ``OnStoppedLeading`` its stop (and :meth:`App.on_lost`); a function
that returns or raises while still leading is started again after the scheduler's error
back-off, and again each time the lease is regained.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from leasectl import metrics
from leasectl.errors import LeasectlError, LeaseLost, LeaseTimeout, TickCancelled
from leasectl.leases import Lease, LeaseEvent
from leasectl.placement import LeasePolicy

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from leasectl.event_loop import EventLoopThread
    from leasectl.lease_manager import LeaseManager

log = logging.getLogger("leasectl.leader")

LeaderFunction = Callable[["LeaseHandle"], Awaitable[None] | None]
#: ``wrapper(handle, run)``: runs ``run()`` (the leader function) around whatever it adds,
#: e.g. a tracing span (:mod:`leasectl.integrations.otel`).
LeaderWrapper = Callable[["LeaseHandle", Callable[[], None]], None]


@dataclass(frozen=True)
class LeaseDecl:
    """A lease without a loop: a ``with`` block's (``leader=None``) or a leader function's."""

    name: str
    leader: LeaderFunction | None = None
    preferred_holder: str | None = None
    requires_labels: tuple[str, ...] = ()

    @property
    def policy(self) -> LeasePolicy:
        return LeasePolicy(self.preferred_holder, self.requires_labels)


@dataclass
class LeaseHandle:
    """This replica's hold on a lease, inside a ``with app.lease(...)`` block or a leader run.

    Falsy once the lease is gone. ``done`` is set when the holder must stop (lease lost or
    released, App stopping); ``lost`` only when the lease itself is gone.
    """

    name: str
    lease: Lease
    replica_id: str
    pool: ConnectionPool
    done: threading.Event = field(default_factory=threading.Event)
    #: the App's async work pool, when it runs async user code (async leaders, async loops)
    async_pool: AsyncConnectionPool | None = None

    __module__ = "leasectl"

    @property
    def epoch(self) -> int:
        """The fencing epoch this hold runs under (higher than every earlier holder's)."""
        return self.lease.epoch

    @property
    def lost(self) -> threading.Event:
        """Set once the lease is lost or released (never cleared: a regain is a new handle)."""
        return self.lease.lost_event

    def __bool__(self) -> bool:
        return self.lease.valid() and not self.done.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is gone, :class:`TickCancelled` if this
        holder was told to stop: call it between items of side effects."""
        self.lease.check()
        if self.done.is_set():
            raise TickCancelled(f"leader of {self.name} told to stop")

    async def until_done(self) -> None:
        """``await`` this in an ``async`` block: returns when :attr:`done` is set."""
        await asyncio.to_thread(self.done.wait)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A pool connection in one transaction, fenced by this lease's epoch.

        :raises FencingRejected: a newer holder bumped the epoch (the block's writes roll back).
        :raises LeaseLost: this replica no longer believes it holds the lease.
        """
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            self.lease.guard(cur)
            yield cur

    @asynccontextmanager
    async def atransaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """:meth:`transaction` for an ``async`` leader function (``async with
        lease.atransaction() as cur``): the same fence, over the App's async pool, so the
        event loop the function shares with the async loops is never blocked."""
        if self.async_pool is None:
            raise LeasectlError(
                f"lease {self.name}: atransaction() is for async leader functions (the App "
                "opens its async pool for them); use transaction() in sync code"
            )
        async with self.async_pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            await self.lease.guard_async(cur)
            yield cur


class Leadership:
    """The running side of the declared leases: waits, leader threads, callbacks.

    Built by the App once its lease manager is running; every lease event passes through
    :meth:`on_event` (a manager listener), which wakes waiters and tells a leader to stop.
    """

    def __init__(
        self,
        manager: LeaseManager,
        pool: ConnectionPool,
        decls: dict[str, LeaseDecl],
        *,
        wrappers: list[LeaderWrapper] | None = None,
        backoff: tuple[float, float] = (1.0, 60.0),
        clock: Callable[[], float] = time.monotonic,
        event_loop: EventLoopThread | None = None,
    ) -> None:
        self.manager = manager
        #: the App's event-loop thread: async leader functions run there, as async ticks do
        self.event_loop = event_loop
        self.pool = pool
        self.decls = decls
        self.wrappers = list(wrappers or [])
        self.backoff = backoff  # a leader function's restart delays (initial, cap)
        self.clock = clock
        self._cv = threading.Condition()
        self._wants: dict[str, int] = {}  # block leases: threads waiting or inside a block
        self._mutex = {name: threading.Lock() for name in decls}  # one block per process
        self._running: dict[str, LeaseHandle] = {}  # leader name -> its current run
        self._blocks: dict[str, LeaseHandle] = {}  # block lease -> the handle inside it
        # block lease -> the lease the last block left: its release is queued to the manager,
        # so the next block must not take that handle (it is about to be lost) but a new one
        self._left: dict[str, Lease] = {}
        self._tasks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Task[None]]] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        manager.add_listener(self.on_event)

    def start(self) -> None:
        for decl in self.decls.values():
            if decl.leader is None:
                continue
            thread = threading.Thread(
                target=self._lead, args=(decl,), name=f"leader-{decl.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float) -> bool:
        """Tell every leader to stop and wait up to ``grace`` s; True if all returned."""
        self._stopping.set()
        with self._cv:
            handles = list(self._running.values()) + list(self._blocks.values())
            self._cv.notify_all()
        for handle in handles:
            self._tell_stop(handle)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "leader function(s) still running after %ss: %s; releasing their leases anyway "
                "(their fenced writes are refused from now on)",
                grace,
                ", ".join(alive),
                extra={"action": "leader_drain_timeout"},
            )
        return not alive

    def on_event(self, event: LeaseEvent) -> None:
        """A manager listener (its thread): wake waiters, stop a leader whose lease went."""
        if event.lease not in self.decls:
            return
        with self._cv:
            handle = self._running.get(event.lease)
            if handle is None:  # not ``or``: a handle whose lease went is falsy
                handle = self._blocks.get(event.lease)
            self._cv.notify_all()
        lost = event.kind in ("lost", "released")
        if lost and handle is not None and handle.lease.epoch == event.epoch:
            self._tell_stop(handle)

    # -- blocks -------------------------------------------------------------------------------

    def hold(
        self, name: str, timeout: float | None, cancel: threading.Event | None = None
    ) -> LeaseHandle:
        """Wait until this replica holds ``name`` (a block lease); pair with :meth:`leave`.

        ``cancel`` set ends the wait with :class:`TickCancelled` (an ``async with`` cancelled).
        """
        mutex = self._mutex[name]
        deadline = None if timeout is None else self.clock() + timeout
        while not mutex.acquire(timeout=0.5):  # bounded: notice a cancel, a stop, the deadline
            if cancel is not None and cancel.is_set():
                raise TickCancelled(f"wait for lease {name!r} cancelled")
            if self._stopping.is_set():
                raise LeasectlError(f"lease {name!r}: the App is stopping")
            if deadline is not None and self.clock() >= deadline:
                raise LeaseTimeout(name, timeout or 0.0)
        try:
            self._want(name)
            try:
                lease = self._wait_held(name, deadline, timeout, cancel, self._left.get(name))
            except BaseException:
                self._unwant(name)
                raise
        except BaseException:
            mutex.release()
            raise
        handle = LeaseHandle(
            name, lease, self.manager.replica_id, self.pool, async_pool=self._async_pool()
        )
        with self._cv:
            self._blocks[name] = handle
        if not lease.valid() or self._stopping.is_set():
            handle.done.set()  # lost (or a stop) between the wait and now
        return handle

    def leave(self, handle: LeaseHandle) -> None:
        handle.done.set()
        with self._cv:
            if self._blocks.get(handle.name) is handle:
                del self._blocks[handle.name]
            self._left[handle.name] = handle.lease
        try:
            self._unwant(handle.name)
        finally:
            self._mutex[handle.name].release()

    def _want(self, name: str) -> None:
        with self._cv:
            self._wants[name] = self._wants.get(name, 0) + 1
            first = self._wants[name] == 1
        if first:
            metrics.LEASE_WANTED.labels(name).set(1)
            self.manager.resume(name)

    def _unwant(self, name: str) -> None:
        with self._cv:
            self._wants[name] -= 1
            last = self._wants[name] == 0
        if last:
            # Release with NOTIFY (a waiting replica takes it in milliseconds) and stop
            # campaigning until the next block wants it.
            self.manager.abandon(name, "released")
            metrics.LEASE_WANTED.labels(name).set(0)

    def _wait_held(
        self,
        name: str,
        deadline: float | None,
        timeout: float | None,
        cancel: threading.Event | None = None,
        skip: Lease | None = None,
    ) -> Lease:
        with self._cv:
            while True:
                lease = self.manager.lease(name)
                if lease is not None and lease is not skip:
                    return lease
                if cancel is not None and cancel.is_set():
                    raise TickCancelled(f"wait for lease {name!r} cancelled")
                if self._stopping.is_set():
                    raise LeasectlError(f"lease {name!r}: the App is stopping")
                if self.manager.fatal is not None:
                    raise LeasectlError(f"lease {name!r}: the lease manager died") from (
                        self.manager.fatal
                    )
                left = None if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    raise LeaseTimeout(name, timeout or 0.0)
                # Events wake us; the bound re-checks a lease whose validity ran out quietly.
                self._cv.wait(0.5 if left is None else min(left, 0.5))

    # -- leader functions ---------------------------------------------------------------------

    def _lead(self, decl: LeaseDecl) -> None:
        """One leader function's thread: wait, run while held, stop when told, repeat."""
        failures = 0
        while not self._stopping.is_set():
            try:
                lease = self._wait_held(decl.name, None, None)
            except LeasectlError:
                return  # stopping, or the manager died (the daemon stops us)
            handle = LeaseHandle(
                decl.name,
                lease,
                self.manager.replica_id,
                self.pool,
                async_pool=self._async_pool(),
            )
            with self._cv:
                self._running[decl.name] = handle
            if not lease.valid() or self._stopping.is_set():
                handle.done.set()  # lost (or a stop) between the wait and now
            ok = self._run_once(decl, handle)
            with self._cv:
                self._running.pop(decl.name, None)
            failures = 0 if ok else failures + 1
            if lease.valid() and not self._stopping.is_set():
                # Returned (or raised) while still leading: start it again, after a pause.
                initial, cap = self.backoff
                delay = min(cap, initial * 2 ** max(0, failures - 1))
                self._stopping.wait(delay)

    def _run_once(self, decl: LeaseDecl, handle: LeaseHandle) -> bool:
        assert decl.leader is not None  # noqa: S101 - narrows a type for mypy; only leaders run here
        fn = decl.leader

        def run() -> None:
            if inspect.iscoroutinefunction(fn):
                self._run_on_loop(decl.name, fn, handle)
            else:
                fn(handle)

        extra = {"lease": decl.name, "epoch": handle.epoch, "replica": self.manager.replica_id}
        log.info(
            "leader %s started (epoch %s)",
            decl.name,
            handle.epoch,
            extra={"action": "leader_started", **extra},
        )
        try:
            call = run
            for wrapper in reversed(self.wrappers):  # the first one outermost
                call = _wrapped(wrapper, handle, call)
            call()
            outcome = "stopped" if handle.done.is_set() else "returned"
            ok = True
        except (
            LeaseLost,
            TickCancelled,
            asyncio.CancelledError,
            concurrent.futures.CancelledError,
        ):
            outcome, ok = "stopped", True
        except Exception as exc:
            outcome, ok = "failed", False
            log.error(
                "leader %s failed: %s",
                decl.name,
                exc,
                exc_info=True,
                extra={"action": "leader_failed", **extra},
            )
        log.info(
            "leader %s %s (epoch %s)",
            decl.name,
            outcome,
            handle.epoch,
            extra={"action": "leader_stopped", "outcome": outcome, **extra},
        )
        return ok

    def _async_pool(self) -> AsyncConnectionPool | None:
        return self.event_loop.pool if self.event_loop is not None else None

    def _run_on_loop(
        self, name: str, fn: Callable[[LeaseHandle], Any], handle: LeaseHandle
    ) -> None:
        """Run an async leader function as a task on the App's event loop and block this
        leader thread until it has ended (returned, raised, or unwound after a cancel).

        The task runs in a copy of this thread's context, so what a wrapper set up here (a
        tracing span) is current inside it, as it is for a sync leader function.
        """
        loop = self.event_loop.loop if self.event_loop is not None else None
        if loop is None:  # an App built without its event loop (a bare Leadership in tests)
            asyncio.run(self._run_async(name, fn, handle))
            return
        context = contextvars.copy_context()
        ended: concurrent.futures.Future[None] = concurrent.futures.Future()

        def finished(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                ended.cancel()
            elif (exc := task.exception()) is not None:
                ended.set_exception(exc)
            else:
                ended.set_result(None)

        def begin() -> None:
            task = loop.create_task(self._run_async(name, fn, handle), context=context)
            task.add_done_callback(finished)

        loop.call_soon_threadsafe(begin)
        ended.result()

    async def _run_async(
        self, name: str, fn: Callable[[LeaseHandle], Any], handle: LeaseHandle
    ) -> None:
        """Run a coroutine function as a task of the running loop; a stop cancels it."""
        task: asyncio.Task[None] = asyncio.ensure_future(fn(handle))
        with self._cv:
            self._tasks[name] = (asyncio.get_running_loop(), task)
        try:
            if handle.done.is_set():
                task.cancel()
            await task
        finally:
            with self._cv:
                self._tasks.pop(name, None)

    def _tell_stop(self, handle: LeaseHandle) -> None:
        handle.done.set()
        with self._cv:
            running = self._tasks.get(handle.name)
        if running is not None:
            loop, task = running
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # its loop closed: the run is over anyway


def _wrapped(
    wrapper: LeaderWrapper, handle: LeaseHandle, inner: Callable[[], None]
) -> Callable[[], None]:
    return lambda: wrapper(handle, inner)


__all__ = ["LeaseDecl", "LeaseHandle", "Leadership", "LeaderFunction", "LeaderWrapper"]
