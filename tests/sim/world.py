"""Virtual time and cooperative threads: the simulator's stand-in for the OS.

Every simulated replica process runs the real :class:`~leasectl.lease_manager.LeaseManager`
code; its "threads" are greenlets that run one at a time, switched only where they wait
(a statement's round trip, ``wait_notify``, an event or a condition). The one heap of
``(time, tiebreak, seq, callback)`` is the only source of order, and the tiebreak comes from
the seed: the same seed gives the same interleaving, bit for bit.

:class:`SimRuntime` implements :class:`leasectl.runtime.Runtime` on top of it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import greenlet

TIMEOUT = object()  # the value a waiter gets when its deadline passes first


class Killed(BaseException):
    """Thrown into a killed process's greenlets (kill -9): nothing it does reaches the world."""


class Stuck(Exception):
    """The simulation cannot go on (a bug in the harness, not in leasectl)."""


@dataclass
class Proc:
    """One simulated OS process (a replica's ``leasectl run``)."""

    name: str
    os_pid: int
    dead: bool = False
    paused_until: float = 0.0
    greenlets: list[greenlet.greenlet] = field(default_factory=list)


class Waiter:
    """One parked greenlet, woken by the first of its sources (or its deadline)."""

    __slots__ = ("world", "g", "proc", "done")

    def __init__(self, world: World) -> None:
        self.world = world
        self.g: greenlet.greenlet | None = None
        self.proc: Proc | None = None
        self.done = False

    def fire(self, value: object = None) -> None:
        if self.done or self.g is None:
            return
        self.done = True
        g, proc = self.g, self.proc
        self.world.at(self.world.now, lambda: self.world.resume(g, proc, value))


class World:
    """The event loop: virtual ``now``, a heap of callbacks, greenlets parked on waiters."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, float, int, Callable[[], None]]] = []
        self._seq = 0
        self.main = greenlet.getcurrent()
        self.owner: dict[greenlet.greenlet, Proc] = {}
        self.events = 0
        self.after_step: Callable[[], None] | None = None

    # -- scheduling --------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self.now), self.rng.random(), self._seq, fn))

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()
            self.events += 1
            if self.after_step is not None:
                self.after_step()
        self.now = max(self.now, t_end)

    def resume(self, g: greenlet.greenlet, proc: Proc | None, value: object) -> None:
        if g.dead or (proc is not None and proc.dead):
            return
        if proc is not None and proc.paused_until > self.now:
            until = proc.paused_until
            self.at(until, lambda: self.resume(g, proc, value))
            return
        if not g:
            g.switch()  # not started yet
        else:
            g.switch(value)

    # -- greenlets ---------------------------------------------------------------------

    def spawn(self, proc: Proc | None, fn: Callable[[], None], done: SimEvent | None) -> None:
        def body() -> None:
            try:
                fn()
            except Killed:
                pass
            finally:
                if done is not None and not (proc is not None and proc.dead):
                    done.set()

        g = greenlet.greenlet(body, parent=self.main)
        if proc is not None:
            proc.greenlets.append(g)
            self.owner[g] = proc
        self.at(self.now, lambda: self.resume(g, proc, None))

    def current_proc(self) -> Proc | None:
        return self.owner.get(greenlet.getcurrent())

    def park(self, waiter: Waiter, until: float | None) -> object:
        """Block the running greenlet until ``waiter`` fires or ``until`` passes."""
        g = greenlet.getcurrent()
        if g is self.main:
            raise Stuck("a blocking call ran outside any simulated thread")
        proc = self.owner.get(g)
        if proc is not None and proc.dead:
            raise Killed
        waiter.g, waiter.proc = g, proc
        if until is not None:
            self.at(until, lambda: waiter.fire(TIMEOUT))
        value = self.main.switch()
        if proc is not None and proc.dead:
            raise Killed
        return value

    def sleep(self, seconds: float) -> None:
        self.park(Waiter(self), self.now + max(0.0, seconds))

    def kill(self, proc: Proc) -> None:
        """kill -9: its greenlets never run again (their finally blocks see :class:`Killed`)."""
        proc.dead = True
        for g in proc.greenlets:
            if not g.dead:
                try:
                    g.throw(Killed)
                except Killed:
                    pass
        proc.greenlets.clear()


class SimEvent:
    """``threading.Event`` on the world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._flag = False
        self._waiters: list[Waiter] = []

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.fire()

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if timeout is not None and timeout <= 0:
            return False
        w = Waiter(self.world)
        self._waiters.append(w)
        self.world.park(w, None if timeout is None else self.world.now + timeout)
        return self._flag


class SimCondition:
    """``threading.Condition`` on the world (one thread runs at a time: the lock is free)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._waiters: list[Waiter] = []

    def __enter__(self) -> SimCondition:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None:
        return None

    def wait(self, timeout: float | None = None) -> bool:
        w = Waiter(self.world)
        self._waiters.append(w)
        got = self.world.park(w, None if timeout is None else self.world.now + timeout)
        return got is not TIMEOUT

    def notify_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.fire()


class SimWaker:
    """The manager's wake-up pipe: ready from :meth:`wake` until :meth:`drain`."""

    _next_fd = 10_000

    def __init__(self, world: World) -> None:
        self.world = world
        SimWaker._next_fd += 1
        self._fd = SimWaker._next_fd
        self.ready = False
        self.waiters: list[Waiter] = []

    @property
    def fd(self) -> int:
        return self._fd

    def wake(self) -> None:
        self.ready = True
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.fire()

    def drain(self) -> None:
        self.ready = False

    def wait(self, timeout: float) -> bool:
        if self.ready:
            return True
        w = Waiter(self.world)
        self.waiters.append(w)
        self.world.park(w, self.world.now + max(0.0, timeout))
        return self.ready


class SimThread:
    """What :meth:`SimRuntime.spawn` returns: join waits for the greenlet to end."""

    def __init__(self, done: SimEvent) -> None:
        self._done = done

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()


class SimRuntime:
    """:class:`leasectl.runtime.Runtime` for one simulated process."""

    def __init__(
        self,
        world: World,
        proc: Proc,
        rng: random.Random,
        host: str,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        self.bugs = bugs
        self.rate = 1.0  # clock rate drift (the simulator sets it per process)
        self.base = 0.0
        self.world = world
        self.proc = proc
        self.rng = rng
        self._host = host
        self.wakers: dict[int, SimWaker] = {}

    @property
    def host(self) -> str:
        return self._host

    @property
    def pid(self) -> int:
        return self.proc.os_pid

    def clock(self) -> float:
        if self.rate == 1.0 and self.base == 0.0:
            return self.world.now
        return self.base + self.rate * self.world.now

    def uniform(self, a: float, b: float) -> float:
        return self.rng.uniform(a, b)

    def event(self) -> SimEvent:
        return SimEvent(self.world)

    def condition(self) -> SimCondition:
        return SimCondition(self.world)

    def waker(self) -> SimWaker:
        w = SimWaker(self.world)
        self.wakers[w.fd] = w
        return w

    def spawn(self, fn: Callable[[], None], name: str) -> SimThread:
        done = SimEvent(self.world)
        self.world.spawn(self.proc, fn, done)
        return SimThread(done)

    def sleep(self, seconds: float) -> None:
        self.world.sleep(seconds)

    def planted(self, bug: str) -> bool:
        return bug in self.bugs
