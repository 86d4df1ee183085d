"""``with app.lease(name) as lease:`` — the block side of :mod:`leasectl.leader`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from leasectl.leader import Leadership, LeaseHandle


class LeaseBlock:
    """``with app.lease(name) as lease:`` (or ``async with``): wait, hold, release on exit.

    Reusable, not re-entrant; one block per process holds a given name at a time (others in
    the same process wait their turn, as replicas do).
    """

    __module__ = "leasectl"

    def __init__(
        self, name: str, leadership: Callable[[], Leadership], timeout: float | None
    ) -> None:
        self.name = name
        self.timeout = timeout
        self._leadership = leadership
        self._held: tuple[Leadership, LeaseHandle] | None = None

    def __enter__(self) -> LeaseHandle:
        return self._enter(None)

    def _enter(self, cancel: threading.Event | None) -> LeaseHandle:
        leadership = self._leadership()
        handle = leadership.hold(self.name, self.timeout, cancel)
        self._held = (leadership, handle)  # one holder per name per process: one slot
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            held[0].leave(held[1])  # never blocks: the release is queued to the manager

    async def __aenter__(self) -> LeaseHandle:
        cancel = threading.Event()
        waiting = asyncio.ensure_future(asyncio.to_thread(self._enter, cancel))
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            cancel.set()  # the waiting thread gives up; a hold it got meanwhile is left
            waiting.add_done_callback(
                lambda f: (
                    None if f.cancelled() or f.exception() else self.__exit__(None, None, None)
                )
            )
            raise

    def _leave_late(self, waiting: asyncio.Future[LeaseHandle]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.__exit__(None, None, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<LeaseBlock {self.name}>"


__all__ = ["LeaseBlock"]
