"""The App's one asyncio event loop, on its own thread, for ``async def`` loops.

Each async loop keeps its own scheduler thread (slots, ledger, backoff are the same code as
for sync loops); only the tick body runs here, as a task, so every async tick of a replica
shares one thread and one :class:`~psycopg_pool.AsyncConnectionPool`. The scheduler thread
waits for the task and cancels it when the lease is lost, the replica stops, or the tick's
timeout passes: ``asyncio.CancelledError`` is raised at the task's next ``await`` — a hard
timeout that a thread cannot have. A task that catches and ignores the cancellation, or that
blocks the event loop with sync code, is not stopped by anything: it becomes *wedged* like a
sync tick (and stalls every other async loop of the replica meanwhile).

Example::

    runner = EventLoopThread(lambda: make_async_pool(dsn, db, "leasectl-work/a"))
    runner.start()
    runner.run_tick(fn, ctx)      # blocks the calling (scheduler) thread until the task ends
    runner.stop()
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from psycopg_pool import AsyncConnectionPool

from leasectl.errors import LeaseLost, TickCancelled
from leasectl.loop import AsyncTickContext

log = logging.getLogger("leasectl.event_loop")

PoolFactory = Callable[[], Coroutine[Any, Any, AsyncConnectionPool]]


class _LinkedEvent(threading.Event):
    """``ctx.stop``: setting it also wakes the scheduler thread waiting for the task."""

    def __init__(self, also: threading.Event) -> None:
        super().__init__()
        self._also = also

    def set(self) -> None:
        super().set()
        self._also.set()


class EventLoopThread:
    """An event loop running forever on a daemon thread, plus the async work pool on it."""

    def __init__(self, pool_factory: PoolFactory, *, name: str = "leasectl-asyncio") -> None:
        self._pool_factory = pool_factory
        self._name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: AsyncConnectionPool | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the thread and open the pool on it; raise what opening the pool raised."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait(timeout)
        self.loop = loop
        try:
            self.pool = asyncio.run_coroutine_threadsafe(self._pool_factory(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Close the pool, cancel what still runs, stop the loop and its thread."""
        loop, self.loop = self.loop, None
        if loop is None or loop.is_closed():
            return
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                asyncio.run_coroutine_threadsafe(pool.close(timeout=timeout), loop).result(
                    timeout + 1
                )
            except Exception as exc:
                log.warning("closing the async pool: %s", exc, extra={"action": "aio_close"})

        def shutdown() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(timeout)

    def run_tick(
        self, fn: Callable[[AsyncTickContext], Awaitable[Any]], ctx: AsyncTickContext
    ) -> None:
        """Run ``fn(ctx)`` as a task and block until it has really ended.

        Returns when it returned; re-raises what it raised. Cancels it when ``ctx.stop`` is
        set (lease lost, shutdown), when the lease's validity runs out, or at
        ``ctx.deadline``, then raises :class:`LeaseLost` or :class:`TickCancelled` — after the
        task has finished unwinding (its ``finally`` blocks and transaction rollbacks), so a
        loop's ticks never overlap.
        """
        loop = self.loop
        if loop is None:
            raise TickCancelled(f"tick of {ctx.loop}: the event loop is not running")
        wake = threading.Event()
        before = ctx.stop
        ctx.stop = _LinkedEvent(wake)
        if before.is_set():  # set before the swap (a setter that saw the old event)
            ctx.stop.set()
        box: dict[str, asyncio.Task[Any]] = {}

        def begin() -> None:
            task = loop.create_task(_call(fn, ctx), name=f"tick-{ctx.loop}")
            box["task"] = task
            task.add_done_callback(lambda _t: wake.set())

        loop.call_soon_threadsafe(begin)
        reason = self._wait(ctx, wake, box)
        task = box["task"]
        if reason is not None:
            loop.call_soon_threadsafe(task.cancel, reason)
            done = threading.Event()
            loop.call_soon_threadsafe(
                lambda: task.add_done_callback(lambda _t: done.set())
            )  # after the cancel: set once the task has unwound
            done.wait()
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if not isinstance(exc, LeaseLost | TickCancelled):
                    raise exc  # type: ignore[misc]
            if reason == "lease lost" and ctx.lease is not None:
                raise LeaseLost(ctx.lease.name, ctx.lease.epoch, ctx.lease.lost_reason or reason)
            raise TickCancelled(f"tick of {ctx.loop} {reason}: task cancelled")
        exc = task.exception()
        if exc is not None:
            raise exc

    @staticmethod
    def _wait(
        ctx: AsyncTickContext, wake: threading.Event, box: dict[str, asyncio.Task[Any]]
    ) -> str | None:
        """Wait for the task; None when it ended by itself, else why it must be cancelled."""
        while True:
            left = ctx.deadline - ctx.clock()
            if ctx.lease is not None:
                left = min(left, ctx.lease.remaining)
            wake.wait(max(left, 0.0))
            wake.clear()
            task = box.get("task")
            if task is not None and task.done():
                return None
            if ctx.lease is not None and not ctx.lease.valid():
                return "lease lost"
            if ctx.stop.is_set():
                return "cancelled (replica stopping)"
            if ctx.clock() >= ctx.deadline:
                return "exceeded its timeout"


async def _call(fn: Callable[[AsyncTickContext], Awaitable[Any]], ctx: AsyncTickContext) -> Any:
    return await fn(ctx)
