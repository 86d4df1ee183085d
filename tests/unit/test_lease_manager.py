"""Campaign, heartbeat, self-fencing and eviction on a fake clock and an in-memory lock session.

The integration tests (test_fencing, test_eviction, test_lease_replicas) prove the protocol on a
real server; these pin the manager's decisions, one step at a time, without one: the manager's
own methods are called directly (no thread, no waiting), the monotonic clock and the database
clock are plain numbers the test moves. ``FakeDatabase`` models only what the statements of
``leasectl.locks.LeaseSession`` promise: session advisory locks, lease rows with epochs, the
replica stamp, events and NOTIFY.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import psycopg
import pytest

from leasectl.errors import (
    DatabaseUnavailable,
    NotMigrated,
    RowLockTimeout,
    SafetyInequalityViolated,
)
from leasectl.lease_manager import LeaseManager
from leasectl.leases import LeaseEvent
from leasectl.locks import Contender, Heartbeat, LeaseSession, TcpBound, translate_error
from leasectl.settings import CoreSettings, LeaseSettings

TTL, GRACE = 5.0, 2.0
SETTINGS = CoreSettings(leases=replace(LeaseSettings(), lease_ttl=TTL, eviction_grace=GRACE))


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Row:
    epoch: int
    holder: str
    holder_pid: int
    renewed_at: float
    released_at: float | None = None


@dataclass
class FakeDatabase:
    """The server side: who holds which lock, the lease and replica rows, the DB clock."""

    now: float = 0.0  # the database clock (now())
    locks: dict[str, int] = field(default_factory=dict)  # lease -> backend pid
    rows: dict[str, Row] = field(default_factory=dict)
    replicas: dict[str, tuple[float, int]] = field(default_factory=dict)  # last_seen, pid
    events: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    sessions: dict[int, FakeSession] = field(default_factory=dict)
    in_recovery: bool = False
    rows_busy: bool = False  # an old holder's fenced transaction keeps the rows locked
    next_pid: int = 1000

    def session(self) -> FakeSession:
        self.next_pid += 1
        s = FakeSession(self, self.next_pid)
        self.sessions[s.backend_pid] = s
        return s

    def notify(self, channel: str, payload: str) -> None:
        for s in self.sessions.values():
            if channel in s.listening and not s.closed:
                s.inbox.append(payload)

    def terminate(self, pid: int) -> None:
        self.sessions[pid].close()


class FakeSession:
    """An in-memory :class:`LeaseSession`."""

    def __init__(self, db: FakeDatabase, pid: int, tcp: TcpBound | None = None) -> None:
        self.db = db
        self.backend_pid = pid
        self.tcp: TcpBound | None = tcp or TcpBound(0, 0, 0, 0, unix_socket=True)
        self.via_pooler = False
        self.listening: set[str] = set()
        self.inbox: list[str] = []
        self.closed = False
        self.broken = False  # the connection died: every statement fails
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.broken or self.closed:
            raise DatabaseUnavailable("lock connection lost: server closed the connection")

    def listen(self) -> None:
        self._call("listen")
        self.listening.add("leasectl_released")

    def listen_control(self) -> None:
        self._call("listen_control")
        self.listening.add("leasectl_control")

    def register_replica(
        self, replica: str, *, host: str, pid: int, version: str, may_lead: bool, loops: list[str]
    ) -> None:
        self._call("register_replica")
        self.db.replicas[replica] = (self.db.now, self.backend_pid)

    def replica_stopped(self, replica: str) -> None:
        self._call("replica_stopped")

    def wait_notify(self, timeout: float) -> list[str]:
        self._call("wait_notify")
        out, self.inbox = self.inbox, []
        return out

    def campaign(self, names: Sequence[str]) -> list[Contender]:
        self._call("campaign")
        out = []
        for name in names:
            if name not in self.db.locks:
                self.db.locks[name] = self.backend_pid
                out.append(Contender(name, True, None, None, None, None))
                continue
            pid = self.db.locks[name]
            row = self.db.rows.get(name)
            age = None
            if row is not None:
                renewed = row.renewed_at
                seen, seen_pid = self.db.replicas.get(row.holder, (None, None))
                if seen is not None and seen_pid == pid:
                    renewed = max(renewed, seen)
                age = self.db.now - renewed
            out.append(
                Contender(
                    name,
                    False,
                    age,
                    pid,
                    row.holder_pid if row else None,
                    row.holder if row else None,
                )
            )
        return out

    def bump_epoch(self, names: Sequence[str], replica: str, reason: str) -> list[tuple[str, int]]:
        self._call("bump_epoch")
        if self.db.rows_busy:
            raise RowLockTimeout("lock connection: waited too long for a row lock")
        out = []
        for name in names:
            old = self.db.rows.get(name)
            epoch = old.epoch + 1 if old else 1
            self.db.rows[name] = Row(epoch, replica, self.backend_pid, self.db.now)
            self.db.events.append(("acquired", name, epoch, reason))
            out.append((name, epoch))
        return out

    def heartbeat(self, names: Sequence[str], epochs: Sequence[int], replica: str) -> Heartbeat:
        self._call("heartbeat")
        if self.db.in_recovery:
            return Heartbeat(True, [])
        unproven = []
        for name, epoch in zip(names, epochs, strict=True):
            row = self.db.rows.get(name)
            mine = self.db.locks.get(name) == self.backend_pid
            if not (mine and row and row.epoch == epoch and row.holder == replica):
                unproven.append(name)
        self.db.replicas[replica] = (self.db.now, self.backend_pid)
        return Heartbeat(False, unproven)

    def hand_over(
        self, names: Sequence[str], epochs: Sequence[int], replica: str, reason: str
    ) -> set[str]:
        self._call("hand_over")
        for name, epoch in zip(names, epochs, strict=True):
            row = self.db.rows.get(name)
            if row and row.epoch == epoch and row.holder == replica:
                row.released_at = self.db.now
            self.db.events.append(("released", name, epoch, reason))
        return self._unlock(names, notify=True)

    def release(self, names: Iterable[str], *, notify: bool = True) -> set[str]:
        self._call("release")
        return self._unlock(names, notify=notify)

    def _unlock(self, names: Iterable[str], *, notify: bool) -> set[str]:
        out = {n for n in names if self.db.locks.get(n) == self.backend_pid}
        for name in out:
            del self.db.locks[name]
            if notify:
                self.db.notify("leasectl_released", name)
        return out

    def evict(self, lease: str, pid: int, *, replica: str, reason: str) -> None:
        self._call("evict")
        self.db.terminate(pid)
        self.db.events.append(("evicted", lease, None, reason))

    def close(self) -> None:
        self.closed = True
        for name in [n for n, pid in self.db.locks.items() if pid == self.backend_pid]:
            del self.db.locks[name]


def manager(
    db: FakeDatabase,
    replica: str,
    wanted: list[str],
    clock: FakeClock,
    settings: CoreSettings = SETTINGS,
    session: FakeSession | None = None,
) -> tuple[LeaseManager, FakeSession, list[LeaseEvent]]:
    """A manager connected to ``db`` (start's connection step, without the thread)."""
    s = session or db.session()
    m = LeaseManager(replica, wanted, settings, dsn="fake", clock=clock, session_factory=lambda: s)
    events: list[LeaseEvent] = []
    m.add_listener(events.append)
    m._session = m._connect()
    return m, s, events


def test_the_fake_implements_the_session_interface() -> None:
    session: LeaseSession = FakeDatabase().session()
    assert session.backend_pid > 0


def test_connect_listens_and_registers() -> None:
    db = FakeDatabase(now=3.0)
    _, s, _ = manager(db, "a", ["x"], FakeClock())
    assert s.calls == ["listen", "listen_control", "register_replica"]
    assert s.listening == {"leasectl_released", "leasectl_control"}
    assert db.replicas["a"] == (3.0, s.backend_pid)


def test_campaign_acquires_and_bumps_the_epoch_then_a_rival_finds_it_taken() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, a_events = manager(db, "a", ["x", "y"], clock)
    a._campaign(sa)
    held = a.held()
    assert {n: lease.epoch for n, lease in held.items()} == {"x": 1, "y": 1}
    assert held["x"].remaining == pytest.approx(TTL)  # valid until campaign start + lease_ttl
    assert db.locks == {"x": sa.backend_pid, "y": sa.backend_pid}
    assert [(e.kind, e.lease, e.epoch) for e in a_events] == [
        ("acquired", "x", 1),
        ("acquired", "y", 1),
    ]

    b, sb, b_events = manager(db, "b", ["x"], clock)
    b._campaign(sb)
    assert b.held() == {} and b_events == []
    assert "bump_epoch" not in sb.calls  # no epoch moves for a lock it did not get

    a.step_down("x", cooldown=30)
    a._run_commands(sa)
    b._campaign(sb)
    assert b.lease("x") is not None and b.lease("x").epoch == 2  # type: ignore[union-attr]


def test_a_manager_that_may_not_lead_never_campaigns() -> None:
    db = FakeDatabase()
    m = LeaseManager("f", ["x"], SETTINGS, dsn="fake", may_lead=False, clock=FakeClock())
    s = db.session()
    m._campaign(s)
    assert s.calls == [] and db.locks == {}


def test_heartbeat_renews_from_its_start_on_the_monotonic_clock() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    m._campaign(s)
    lease = m.lease("x")
    assert lease is not None
    clock.now = 103.0
    db.now = 3.0
    m._heartbeat(s)
    assert db.replicas["a"] == (3.0, s.backend_pid)  # the stamp eviction reads
    assert events[-1].kind == "heartbeat" and m.last_heartbeat_ok == 103.0
    clock.now = 107.999
    assert lease.valid()
    clock.now = 108.0  # 103 + lease_ttl
    assert not lease.valid()


def test_a_heartbeat_that_fails_past_lease_ttl_self_fences() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    m._campaign(s)
    lease = m.lease("x")
    assert lease is not None
    s.broken = True  # every heartbeat from now on fails (or hangs: the clock runs on)
    clock.now = 101.0
    with pytest.raises(DatabaseUnavailable):
        m._heartbeat(s)
    clock.now = 104.9
    assert lease.valid()  # belief lasts until the last good renewal + lease_ttl, not longer
    m._expire(clock())
    assert m.lease("x") is not None
    clock.now = 105.0
    assert not lease.valid() and lease.lost_reason == "ttl_expired"
    m._expire(clock())
    assert m.held() == {} and "x" not in m._state.held
    assert lease.lost_event.is_set()
    assert [(e.kind, e.reason) for e in events if e.kind == "lost"] == [("lost", "ttl_expired")]


def test_a_heartbeat_that_finds_the_epoch_moved_drops_the_lease_and_unlocks() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x", "y"], clock)
    m._campaign(s)
    db.rows["x"].epoch += 1  # what a successor's bump does
    m._heartbeat(s)
    assert set(m.held()) == {"y"}
    assert "x" not in db.locks  # given back, so a re-acquisition cannot stack a second grant
    lost = [e for e in events if e.kind == "lost"]
    assert [(e.lease, e.reason) for e in lost] == [("x", "lock_missing_or_superseded")]


def test_a_server_in_recovery_ends_every_lease() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    m._campaign(s)
    lease = m.lease("x")
    db.in_recovery = True
    with pytest.raises(DatabaseUnavailable, match="recovery"):
        m._heartbeat(s)
    assert lease is not None and lease.lost_reason == "server_in_recovery"


def test_a_holder_older_than_ttl_plus_grace_on_the_db_clock_is_evicted() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    hung, hs, _ = manager(db, "hung", ["x"], clock)
    hung._campaign(hs)
    hs_pid = hs.backend_pid
    cand, cs, cand_events = manager(db, "cand", ["x"], clock)

    db.now = 4.0  # the holder heartbeats: its stamp counts as a renewal
    hung._heartbeat(hs)
    db.now = 4.0 + TTL + GRACE  # exactly at the threshold: not yet
    cand._campaign(cs)
    assert not hs.closed and "evict" not in cs.calls

    db.now = 4.0 + TTL + GRACE + 0.1
    cand._campaign(cs)
    assert hs.closed and db.locks.get("x") is None  # its session ended: the server freed it
    assert db.events[-1][:3] == ("evicted", "x", None) and f"pid {hs_pid}" in db.events[-1][3]
    assert [e.kind for e in cand_events] == ["evicted"]
    cand._campaign(cs)
    new = cand.lease("x")
    assert new is not None and new.epoch == 2


def test_a_renewal_stamped_by_another_session_does_not_keep_a_hung_holder() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    hung, hs, _ = manager(db, "r", ["x"], clock)
    hung._campaign(hs)
    # A restarted process reusing the replica id heartbeats on its own (lock-less) session.
    db.now = 6.0
    db.replicas["r"] = (6.0, 4242)
    cand, cs, _ = manager(db, "cand", ["x"], clock)
    db.now = TTL + GRACE + 0.1
    cand._campaign(cs)
    assert hs.closed


def test_a_row_not_describing_the_lock_holder_is_evicted_only_if_that_persists() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    _, hs, _ = manager(db, "h", ["x"], clock)
    db.locks["x"] = hs.backend_pid  # locked, but no epoch bump recorded for this session
    db.rows["x"] = Row(3, "old", 999, renewed_at=0.0)
    cand, cs, _ = manager(db, "cand", ["x"], clock)
    db.now = 100.0  # the row looks ancient, but it is not the lock holder's
    cand._campaign(cs)
    assert not hs.closed
    clock.now = 100.0 + TTL + GRACE  # the mismatch has lasted the threshold, not more
    cand._campaign(cs)
    assert not hs.closed
    clock.now = 100.0 + TTL + GRACE + 0.1
    cand._campaign(cs)
    assert hs.closed


def test_an_epoch_bump_stuck_behind_fenced_writes_gives_the_locks_back_and_retries() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    db.rows_busy = True
    m._campaign(s)
    assert m.held() == {} and db.locks == {} and events == []
    assert s.inbox == []  # given back quietly: nobody was waiting for a release
    db.rows_busy = False
    m._campaign(s)
    assert m.lease("x") is not None


def test_release_notifies_waiters_and_records_it() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, a_events = manager(db, "a", ["x"], clock)
    a._campaign(sa)
    lease = a.lease("x")
    b, sb, _ = manager(db, "b", ["x"], clock)
    b._campaign(sb)
    a.step_down("x", cooldown=30)
    a._run_commands(sa)
    assert lease is not None and lease.lost_reason == "step_down"
    assert ("released", "x", 1, "step_down") in db.events and db.rows["x"].released_at is not None
    assert a_events[-1].kind == "released"
    notes = sb.wait_notify(0.0)
    assert notes == ["x"]
    assert b._on_notify(sb, notes[0])  # a waiter campaigns at once
    a._campaign(sa)
    assert a.lease("x") is None  # the cooldown keeps the stepped-down holder away


def test_a_step_down_request_over_the_control_channel() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, _ = manager(db, "a", ["x", "y"], clock)
    a._campaign(sa)
    request = '{"action": "step_down", "lease": "y", "replica": null, "cooldown": 5}'
    assert not a._on_notify(sa, request)
    assert set(a.held()) == {"x"} and "y" not in db.locks
    assert not a._on_notify(sa, '{"action": "step_down", "lease": "x", "replica": "other"}')
    assert set(a.held()) == {"x"}


def test_shutdown_releases_and_marks_the_replica_stopped() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    m._campaign(s)
    m._shutdown()
    assert db.locks == {} and s.closed
    assert s.calls[-2:] == ["hand_over", "replica_stopped"]


def test_connection_loss_at_shutdown_still_drops_belief() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    m._campaign(s)
    lease = m.lease("x")
    s.broken = True
    m._shutdown()
    assert lease is not None and not lease.valid() and s.closed


def test_the_safety_inequality_is_checked_on_the_sessions_tcp_settings() -> None:
    db = FakeDatabase()
    tight = FakeSession(db, 7, tcp=TcpBound(4, 1, 4, 6000, unix_socket=False))  # D_srv 6 s
    m = LeaseManager("a", ["x"], SETTINGS, dsn="fake", session_factory=lambda: tight)
    with pytest.raises(SafetyInequalityViolated, match="D_srv = 6.0s"):
        m._connect()
    assert tight.closed and "register_replica" not in tight.calls


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
            RowLockTimeout,
            "row lock",
        ),
        (
            psycopg.errors.UndefinedTable('relation "leasectl_leases" does not exist'),
            NotMigrated,
            "migrations",
        ),
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            DatabaseUnavailable,
            "lost",
        ),
        (
            psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE"),
            DatabaseUnavailable,
            "failed",
        ),
    ],
)
def test_psycopg_errors_are_translated_once(
    exc: psycopg.Error, kind: type[Exception], text: str
) -> None:
    got = translate_error(exc)
    assert type(got) is kind and text in str(got)
