"""The lease manager's runtime: time, randomness, waiting, threads and process identity.

Everything the lease manager needs from the operating system, except its database sessions,
goes through one :class:`Runtime`: the monotonic clock, the random source for jitter, events
and conditions, the waker that ends its sleep, spawning and sleeping, and the host and pid it
publishes. :class:`ThreadRuntime` is what production uses (threads, ``time``, ``random``, a
self-pipe); the deterministic simulator in ``tests/sim/`` supplies one that runs many
replicas' real manager code in one thread on virtual time, so every interleaving it finds is
replayable from a seed. The sessions come through the manager's own factories
(``session_factory``, ``watch_factory``, ``standby_factory``).

Nothing here decides anything: a runtime only waits, spawns and tells the time.
"""

from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Protocol


class Event(Protocol):
    """A flag threads wait on (``threading.Event``'s surface)."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Condition(Protocol):
    """A condition variable (``threading.Condition``'s surface the manager uses)."""

    def __enter__(self) -> object: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def notify_all(self) -> None: ...


class Wake(Protocol):
    """Ends the manager's sleep from any thread: :meth:`wake` makes it ready until :meth:`drain`.

    :attr:`fd` is what a lock session's ``wait_notify`` waits on together with its socket.
    """

    @property
    def fd(self) -> int: ...
    def wake(self) -> None: ...
    def drain(self) -> None: ...
    def wait(self, timeout: float) -> bool: ...


class Joinable(Protocol):
    """A spawned activity (a thread) that can be waited for."""

    def join(self, timeout: float | None = None) -> None: ...
    def is_alive(self) -> bool: ...


class Runtime(Protocol):
    """What the lease manager takes from the world, so a simulator can stand in for it.

    :meth:`planted` is a fault point in FoundationDB's BUGGIFY sense: a named,
    fixed defect that only a simulated runtime switches back on (production: never).
    """

    @property
    def host(self) -> str: ...
    @property
    def pid(self) -> int: ...
    def clock(self) -> float: ...
    def uniform(self, a: float, b: float) -> float: ...
    def event(self) -> Event: ...
    def condition(self) -> Condition: ...
    def waker(self) -> Wake: ...
    def spawn(self, fn: Callable[[], None], name: str) -> Joinable: ...
    def sleep(self, seconds: float) -> None: ...
    def planted(self, bug: str) -> bool: ...


class Waker:
    """A self-pipe: :meth:`wake` (any thread) makes :attr:`fd` readable until :meth:`drain`.

    The manager thread selects on it together with the lock connection's socket, so commands
    and stop requests end its wait at once instead of at the next poll.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # Closed when the owner is collected, never earlier: a late wake() from another
        # thread must not write into a descriptor number the process has reused meanwhile.
        self._close = weakref.finalize(self, _close_fds, self._r, self._w)

    @property
    def fd(self) -> int:
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"!")
        except (BlockingIOError, OSError):
            pass  # full (already readable) or closed at exit: either way nothing to add

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` passes (True: woken)."""
        ready, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        return bool(ready)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class ThreadRuntime:
    """The production runtime: OS threads, ``time.monotonic``, ``random`` and a self-pipe."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng

    @property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def pid(self) -> int:
        return os.getpid()

    def clock(self) -> float:
        return time.monotonic()

    def uniform(self, a: float, b: float) -> float:
        if self._rng is not None:
            return self._rng.uniform(a, b)
        return random.uniform(a, b)  # noqa: S311 - jitter spreads timers; nothing secret depends on it

    def event(self) -> Event:
        return threading.Event()

    def condition(self) -> Condition:
        return threading.Condition()

    def waker(self) -> Wake:
        return Waker()

    def spawn(self, fn: Callable[[], None], name: str) -> Joinable:
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()
        return thread

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def planted(self, bug: str) -> bool:
        """Never: fault points exist for the simulator (``tests/sim/``), which turns one on
        to prove its invariants catch the bug a fix removed."""
        return False


#: The runtime every lease manager uses unless given another.
DEFAULT = ThreadRuntime()
