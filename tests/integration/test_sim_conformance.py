"""The simulator's server against the real one: the same random session calls, the same answers.

``tests/sim/server.py`` models what ``leasectl/sql/{locks,leases,standby}.sql`` and the
migrations do. Here three clients run one random sequence of lock-session calls (register,
hold_replica, campaign, bump, heartbeat, hand-over with and without an announce, release,
stop, evict, close and reconnect) and a standby's poll, both on the embedded PostgreSQL
through the real :class:`~leasectl.locks.LockSession` / ``StandbySession`` and on the
simulated server; after every call the answers, normalised (backend pids become client
names, ages become "known or not"), must be equal. A change to the SQL that the model does
not follow fails here rather than silently making the simulator prove the wrong thing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from leasectl.errors import DatabaseUnavailable
from leasectl.keys import KeyRegistry
from leasectl.locks import LockSession
from leasectl.settings import DatabaseSettings
from leasectl.standby import StandbySession
from tests.sim.server import Conn, Link, Server, SimLockSession, SimStandbySession
from tests.sim.world import Proc, SimEvent, World

T = TypeVar("T")

NAMES = ["conf-a", "conf-b", "conf-c"]
CLIENTS = ["c0", "c1", "c2"]


class SimSide:
    """The simulated server; each call runs in a greenlet until it returns (the session
    factories run inside one, like every other call)."""

    def __init__(self) -> None:
        self.world = World(0)
        self.server = Server(self.world, d_srv=9.0)
        self.procs = {c: Proc(c, 100 + i) for i, c in enumerate(CLIENTS)}

    def call(self, fn: Callable[[], T]) -> T:
        box: dict[str, Any] = {}
        done = SimEvent(self.world)

        def body() -> None:
            try:
                box["v"] = fn()
            except Exception as exc:  # re-raised on the caller's side
                box["e"] = exc

        self.world.spawn(None, body, done)
        deadline = self.world.now + 5.0
        while not done.is_set() and self.world.now < deadline:
            self.world.run_until(self.world.now + 0.001)
        assert done.is_set(), "a simulated call did not return"
        if "e" in box:
            raise box["e"]
        return box["v"]  # type: ignore[no-any-return]

    def lock(self, client: str) -> SimLockSession:
        proc = self.procs[client]
        conn = Conn(self.server, proc, "lock", f"leasectl/{client}", Link(0.0005), 3.0)
        return SimLockSession(conn, tcp=None, wakers={})

    def standby(self) -> SimStandbySession:
        proc = Proc("standby", 999)
        conn = Conn(self.server, proc, "standby", "s", Link(0.0005), 3.0)
        return SimStandbySession(conn)


class RealSide:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.registry = KeyRegistry()
        for n in NAMES:
            self.registry.register(n)

    def call(self, fn: Callable[[], T]) -> T:
        return fn()

    def lock(self, client: str) -> LockSession:
        return LockSession.connect(
            self.dsn,
            DatabaseSettings(),
            f"leasectl/{client}",
            registry=self.registry,
            check_pooler=False,
        )

    def standby(self) -> StandbySession:
        return StandbySession.connect(self.dsn, DatabaseSettings(), "leasectl-standby")


def ident(client: str) -> dict[str, Any]:
    return {
        "host": "conformance",
        "pid": CLIENTS.index(client) + 1,
        "version": "0",
        "may_lead": True,
        "loops": NAMES,
        "labels": (),
        "campaigns_for": NAMES,
        "preferred_for": (),
    }


class Run:
    """One side's clients and what they hold (epochs as the side returned them)."""

    def __init__(self, side: SimSide | RealSide) -> None:
        self.side = side
        self.sessions: dict[str, Any] = {}
        self.epochs: dict[tuple[str, str], int] = {}
        self.standby: Any = side.call(side.standby)

    def pid_names(self) -> dict[int, str]:
        return {s.backend_pid: c for c, s in self.sessions.items() if s is not None}

    def step(self, op: str, client: str, rng: random.Random) -> object:
        side = self.side
        s = self.sessions.get(client)
        if op == "connect" or s is None:
            if s is not None:
                side.call(s.close)
            self.sessions[client] = side.call(lambda: side.lock(client))
            s = self.sessions[client]
            side.call(s.listen)
            side.call(s.listen_control)
            reg = side.call(lambda: s.register_replica(client, **ident(client)))
            return ("connect", reg is not None)
        names = sorted(rng.sample(NAMES, rng.randint(1, len(NAMES))))
        mine = [n for n in names if self.epochs.get((client, n)) is not None]
        pids = self.pid_names()
        try:
            if op == "campaign":
                tried = [n for n in names if n not in mine]
                rows = side.call(lambda: s.campaign(tried, [n for n in NAMES if n not in tried]))
                got = [r.name for r in rows if r.got]
                if got:
                    for name, epoch in side.call(lambda: s.bump_epoch(got, client, "c")):
                        self.epochs[(client, name)] = epoch
                return sorted(
                    (
                        r.name,
                        r.got,
                        pids.get(r.holder_pid, "?") if r.holder_pid else None,
                        r.row_holder,
                        r.holder_gone,
                        r.renewed_age_s is None,
                    )
                    for r in rows
                )
            if op == "heartbeat":
                held = sorted(n for (c, n) in self.epochs if c == client)
                hb = side.call(
                    lambda: s.heartbeat(
                        held, [self.epochs[(client, n)] for n in held], client, live_s=5.0
                    )
                )
                for n in hb.unproven:
                    self.epochs.pop((client, n), None)
                view = sorted((r.id, sorted(r.campaigns_for)) for r in hb.replicas or [])
                return ("hb", hb.in_recovery, sorted(hb.unproven), view)
            if op == "hand_over":
                held = sorted(n for (c, n) in self.epochs if c == client)
                leaving = rng.random() < 0.2
                announce = '{"action": "hand_over", "to": "c9"}' if rng.random() < 0.5 else None
                epochs = [self.epochs.pop((client, n)) for n in held]
                out = side.call(
                    lambda: s.hand_over(
                        held, epochs, client, "conf", leaving=leaving, announce=announce
                    )
                )
                return ("hand_over", sorted(out))
            if op == "release":
                for n in names:
                    self.epochs.pop((client, n), None)
                return ("release", sorted(side.call(lambda: s.release(names))))
            if op == "hold":
                return ("hold", side.call(lambda: s.hold_replica(client)))
            if op == "stopped":
                side.call(lambda: s.replica_stopped(client))
                return ("stopped",)
            if op == "notify":
                heard: list[str] = []
                while batch := side.call(lambda: s.wait_notify(0.5)):  # until quiet
                    heard += batch
                # a payload's JSON spacing is PL/pgSQL's or Python's: compare what it says
                return (
                    "notify",
                    sorted(json.dumps(json.loads(p)) if p[:1] == "{" else p for p in heard),
                )
            if op == "evict":
                others = [c for c in CLIENTS if c != client and self.sessions.get(c) is not None]
                if not others:
                    return ("evict", None)
                victim = self.sessions[rng.choice(others)]
                side.call(lambda: s.evict(NAMES[0], victim.backend_pid, replica=client, reason="c"))
                return ("evict", pids.get(victim.backend_pid))
            if op == "poll":
                polled = side.call(
                    lambda: self.standby.poll(
                        "sb", **{**ident("c0"), "pid": 77}, names=NAMES, live_s=5.0
                    )
                )
                if polled is None:
                    return ("poll", None)
                ids = sorted(r.id for r in polled.replicas or [])
                return ("poll", ids, sorted(polled.holders.items(), key=str))
        except DatabaseUnavailable:
            for key in [k for k in self.epochs if k[0] == client]:
                del self.epochs[key]
            self.sessions[client] = None
            return (op, "unavailable")
        raise AssertionError(op)


OPS = (
    ["campaign"] * 4
    + ["heartbeat"] * 3
    + [
        "hand_over",
        "release",
        "hold",
        "stopped",
        "notify",
        "evict",
        "poll",
        "connect",
    ]
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_simulated_server_answers_as_postgresql_does(dsn: str, seed: int) -> None:
    rng = random.Random(seed)
    plan = [(rng.choice(OPS), rng.choice(CLIENTS), rng.getrandbits(32)) for _ in range(60)]
    real, sim = Run(RealSide(dsn)), Run(SimSide())
    try:
        for i, (op, client, sub) in enumerate(plan):
            want = real.step(op, client, random.Random(sub))
            got = sim.step(op, client, random.Random(sub))
            assert got == want, f"step {i} {op} by {client}: sim {got!r} != postgres {want!r}"
    finally:
        for s in real.sessions.values():
            if s is not None:
                s.close()
        real.standby.close()
