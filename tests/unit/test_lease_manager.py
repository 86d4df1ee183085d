"""Campaign, heartbeat, self-fencing and eviction on a fake clock and an in-memory lock session.

The integration tests (test_fencing, test_eviction, test_lease_replicas) prove the protocol on a
real server; these pin the manager's decisions, one step at a time, without one: the manager's
own methods are called directly (no thread, no waiting), the monotonic clock and the database
clock are plain numbers the test moves. ``FakeDatabase`` models only what the statements of
``leasectl.locks.LeaseSession`` promise: session advisory locks, lease rows with epochs, the
replica stamp, events and NOTIFY.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import psycopg
import pytest

from leasectl._lease_context import Shared
from leasectl._lease_loop import LockLoop
from leasectl.errors import (
    ConfigError,
    DatabaseUnavailable,
    KeyCollision,
    NotMigrated,
    RowLockTimeout,
    SafetyInequalityViolated,
)
from leasectl.keys import int4_hash
from leasectl.lease_manager import LeaseManager
from leasectl.leases import LeaseEvent
from leasectl.locks import (
    Contender,
    Heartbeat,
    LeaseSession,
    Registered,
    TcpBound,
    gone_payload,
    translate_error,
)
from leasectl.placement import Replica, hrw_position, ranking
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
class ReplicaRow:
    """The placement columns of a ``leasectl_replicas`` row (migration 0010)."""

    campaigns_for: list[str]
    preferred_for: list[str]
    connected_at: float
    labels: list[str]
    stopped: bool = False


@dataclass
class FakeDatabase:
    """The server side: who holds which lock, the lease and replica rows, the DB clock."""

    now: float = 0.0  # the database clock (now())
    locks: dict[str, int] = field(default_factory=dict)  # lease -> backend pid
    rows: dict[str, Row] = field(default_factory=dict)
    replicas: dict[str, tuple[float, int]] = field(default_factory=dict)  # last_seen, pid
    placement: dict[str, ReplicaRow] = field(default_factory=dict)
    events: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    sessions: dict[int, FakeSession] = field(default_factory=dict)
    liveness: dict[str, int] = field(default_factory=dict)  # replica -> pid (hold_replica)
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

    def live(self, live_s: float, me: str) -> list[Replica]:
        """The heartbeat's `live` part: not stopped, seen recently, lock session connected."""
        out = []
        for rid, row in self.placement.items():
            seen, pid = self.replicas[rid]
            connected = pid in self.sessions and not self.sessions[pid].closed
            if row.stopped or seen <= self.now - live_s or not (connected or rid == me):
                continue
            out.append(
                Replica(
                    rid,
                    frozenset(row.campaigns_for),
                    frozenset(row.preferred_for),
                    frozenset(),
                    self.now - row.connected_at,
                    tuple(row.labels),
                )
            )
        return out


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
        self.watched: list[str] = []  # names the last campaign reported on without trying
        self.waits: list[float] = []  # the timeout of every wait_notify
        self.on_wait: Callable[[], None] | None = None  # run at each wait (tests stop the loop)

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
        self,
        replica: str,
        *,
        host: str,
        pid: int,
        version: str,
        may_lead: bool,
        loops: list[str],
        labels: Sequence[str] = (),
        campaigns_for: Sequence[str] = (),
        preferred_for: Sequence[str] = (),
        declared_leases: Sequence[str] = (),
    ) -> Registered | None:
        self._call("register_replica")
        self.db.replicas[replica] = (self.db.now, self.backend_pid)
        self.db.placement[replica] = ReplicaRow(
            list(campaigns_for) if may_lead else [], list(preferred_for), self.db.now, list(labels)
        )
        return Registered(None)

    def refused(self, replica: str) -> ConfigError:
        return ConfigError(f"replica id {replica!r} in use")

    def replica_wedged(self, replica: str, loops: Sequence[str]) -> None:
        self._call("replica_wedged")

    def replica_candidacy(
        self, replica: str, campaigns_for: Sequence[str], preferred_for: Sequence[str]
    ) -> None:
        self._call("replica_candidacy")
        row = self.db.placement[replica]
        row.campaigns_for, row.preferred_for = list(campaigns_for), list(preferred_for)

    def announce(self, payload: str) -> None:
        self._call("announce")
        self.db.notify("leasectl_control", payload)

    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None:
        self._call("key_collision")
        theirs = set(self.db.rows) | {
            n for row in self.db.placement.values() if not row.stopped for n in row.campaigns_for
        }
        for mine in sorted(names):
            for other in sorted(theirs - {mine}):
                if int4_hash(other) == int4_hash(mine):
                    return other, mine, int4_hash(mine)
        return None

    def replica_stopped(self, replica: str) -> None:
        self._call("replica_stopped")
        self.db.placement[replica].stopped = True
        self.db.notify("leasectl_control", gone_payload(replica, "stop"))

    def hold_replica(self, replica: str) -> bool:
        self._call("hold_replica")
        holder = self.db.liveness.get(replica)
        if holder is not None and holder != self.backend_pid:
            return False
        self.db.liveness[replica] = self.backend_pid
        return True

    def wait_notify(self, timeout: float, wake: int | None = None) -> list[str]:
        self._call("wait_notify")
        self.waits.append(timeout)
        if self.on_wait is not None:
            self.on_wait()
        out, self.inbox = self.inbox, []
        return out

    def campaign(self, names: Sequence[str], watch: Sequence[str] = ()) -> list[Contender]:
        self._call("campaign")
        self.watched = list(watch)
        out = []
        for name in [*names, *watch]:
            if name not in self.db.locks and name in watch:
                out.append(Contender(name, False, None, None, None, None))
                continue
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

    def heartbeat(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        *,
        live_s: float | None = None,
    ) -> Heartbeat:
        self._call("heartbeat")
        if self.db.in_recovery:
            return Heartbeat(True, [])
        live = None if live_s is None else self.db.live(live_s, replica)
        unproven = []
        for name, epoch in zip(names, epochs, strict=True):
            row = self.db.rows.get(name)
            mine = self.db.locks.get(name) == self.backend_pid
            if not (mine and row and row.epoch == epoch and row.holder == replica):
                unproven.append(name)
        self.db.replicas[replica] = (self.db.now, self.backend_pid)
        return Heartbeat(False, unproven, live)

    def hand_over(
        self,
        names: Sequence[str],
        epochs: Sequence[int],
        replica: str,
        reason: str,
        *,
        leaving: bool = False,
        announce: str | None = None,
    ) -> set[str]:
        self._call("hand_over")
        if announce is not None:
            self.db.notify("leasectl_control", announce)
        if leaving:
            self.db.placement[replica].stopped = True
            self.db.notify("leasectl_control", gone_payload(replica, "stop"))
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
        for rid in [r for r, pid in self.db.liveness.items() if pid == self.backend_pid]:
            del self.db.liveness[rid]


def loop(m: LeaseManager) -> LockLoop:
    """The manager's lock-session loop, whose rounds (campaign, heartbeat, ...) the tests
    run one at a time on virtual time instead of starting its thread."""
    return m._loop  # noqa: SLF001 - the one way in: the loop's own surface is public


def shared(m: LeaseManager) -> Shared:
    """What the manager's shells share (its stop event, its wake-up pipe)."""
    return m._shared  # noqa: SLF001 - as loop()


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
    loop(m).session = loop(m).connect()
    return m, s, events


def test_the_fake_implements_the_session_interface() -> None:
    session: LeaseSession = FakeDatabase().session()
    assert session.backend_pid > 0


def test_connect_listens_and_registers() -> None:
    db = FakeDatabase(now=3.0)
    _, s, _ = manager(db, "a", ["x"], FakeClock())
    # ... and takes its liveness lock, which a peer's watch connection waits on
    assert s.calls == [
        "key_collision",
        "listen",
        "listen_control",
        "register_replica",
        "hold_replica",
    ]
    assert db.liveness == {"a": s.backend_pid}
    assert s.listening == {"leasectl_released", "leasectl_control"}
    assert db.replicas["a"] == (3.0, s.backend_pid)


def test_a_name_whose_key_another_replica_uses_is_refused_at_start() -> None:
    """Two names with one 32-bit key would share one lock; across processes with different
    loop sets, only the cluster's records can tell. Both names are in the error."""
    first, second = "loop-38791", "loop-104806"
    assert int4_hash(first) == int4_hash(second)
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, _ = manager(db, "a", [first], clock)
    loop(a).campaign(sa)
    assert a.lease(first) is not None
    with pytest.raises(KeyCollision) as refused:
        manager(db, "b", [second, "unrelated"], clock)
    assert set(refused.value.names) == {first, second}
    # A replica whose names collide with nobody starts as usual.
    manager(db, "c", ["unrelated"], clock)


def test_campaign_acquires_and_bumps_the_epoch_then_a_rival_finds_it_taken() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, a_events = manager(db, "a", ["x", "y"], clock)
    loop(a).campaign(sa)
    held = a.held()
    assert {n: lease.epoch for n, lease in held.items()} == {"x": 1, "y": 1}
    assert held["x"].remaining == pytest.approx(TTL)  # valid until campaign start + lease_ttl
    assert db.locks == {"x": sa.backend_pid, "y": sa.backend_pid}
    assert [(e.kind, e.lease, e.epoch) for e in a_events] == [
        ("acquired", "x", 1),
        ("acquired", "y", 1),
    ]

    b, sb, b_events = manager(db, "b", ["x"], clock)
    loop(b).campaign(sb)
    assert b.held() == {} and b_events == []
    assert "bump_epoch" not in sb.calls  # no epoch moves for a lock it did not get

    a.step_down("x", cooldown=30)
    loop(a).run_commands(sa)
    loop(b).campaign(sb)
    assert b.lease("x") is not None and b.lease("x").epoch == 2  # type: ignore[union-attr]


def test_a_manager_that_may_not_lead_never_campaigns() -> None:
    db = FakeDatabase()
    m = LeaseManager("f", ["x"], SETTINGS, dsn="fake", may_lead=False, clock=FakeClock())
    s = db.session()
    loop(m).campaign(s)
    assert s.calls == [] and db.locks == {}


def test_heartbeat_renews_from_its_start_on_the_monotonic_clock() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    lease = m.lease("x")
    assert lease is not None
    clock.now = 103.0
    db.now = 3.0
    loop(m).heartbeat(s)
    assert db.replicas["a"] == (3.0, s.backend_pid)  # the stamp eviction reads
    assert events[-1].kind == "heartbeat" and m.last_heartbeat_ok == 103.0
    clock.now = 107.999
    assert lease.valid()
    clock.now = 108.0  # 103 + lease_ttl
    assert not lease.valid()


def test_a_heartbeat_that_fails_past_lease_ttl_self_fences() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    lease = m.lease("x")
    assert lease is not None
    s.broken = True  # every heartbeat from now on fails (or hangs: the clock runs on)
    clock.now = 101.0
    with pytest.raises(DatabaseUnavailable):
        loop(m).heartbeat(s)
    clock.now = 104.9
    assert lease.valid()  # belief lasts until the last good renewal + lease_ttl, not longer
    loop(m).expire(s, clock())
    assert m.lease("x") is not None
    clock.now = 105.0
    assert not lease.valid() and lease.lost_reason == "ttl_expired"
    with pytest.raises(DatabaseUnavailable):  # giving the lock back fails too: reconnect
        loop(m).expire(s, clock())
    assert m.held() == {} and "x" not in m.core.state.held
    assert lease.lost_event.is_set()
    assert [(e.kind, e.reason) for e in events if e.kind == "lost"] == [("lost", "ttl_expired")]


def test_a_lease_that_expired_on_a_live_session_gives_its_lock_back() -> None:
    """A stopped holder (SIGSTOP longer than lease_ttl, not yet evicted) resumes: it drops the
    lease and unlocks it, so its next campaign takes one grant, not a stacked second one
    (simulator seed 56: one release later the lock stayed held and the lease stuck here)."""
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    assert m.lease("x") is not None
    clock.now = 100.0 + TTL  # no heartbeat meanwhile: the process was stopped
    loop(m).expire(s, clock())
    assert m.lease("x") is None and "x" not in db.locks  # unlocked
    loop(m).campaign(s)
    assert m.lease("x") is not None and db.locks["x"] == s.backend_pid


def test_a_heartbeat_that_finds_the_epoch_moved_drops_the_lease_and_unlocks() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x", "y"], clock)
    loop(m).campaign(s)
    db.rows["x"].epoch += 1  # what a successor's bump does
    loop(m).heartbeat(s)
    assert set(m.held()) == {"y"}
    assert "x" not in db.locks  # given back, so a re-acquisition cannot stack a second grant
    lost = [e for e in events if e.kind == "lost"]
    assert [(e.lease, e.reason) for e in lost] == [("x", "lock_missing_or_superseded")]


def test_a_server_in_recovery_ends_every_lease() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    lease = m.lease("x")
    db.in_recovery = True
    with pytest.raises(DatabaseUnavailable, match="recovery"):
        loop(m).heartbeat(s)
    assert lease is not None and lease.lost_reason == "server_in_recovery"


def test_a_holder_older_than_ttl_plus_grace_on_the_db_clock_is_evicted() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    hung, hs, _ = manager(db, "hung", ["x"], clock)
    loop(hung).campaign(hs)
    hs_pid = hs.backend_pid
    cand, cs, cand_events = manager(db, "cand", ["x"], clock)

    db.now = 4.0  # the holder heartbeats: its stamp counts as a renewal
    loop(hung).heartbeat(hs)
    db.now = 4.0 + TTL + GRACE  # exactly at the threshold: not yet
    loop(cand).campaign(cs)
    assert not hs.closed and "evict" not in cs.calls

    db.now = 4.0 + TTL + GRACE + 0.1
    loop(cand).campaign(cs)
    assert hs.closed and db.locks.get("x") is None  # its session ended: the server freed it
    assert db.events[-1][:3] == ("evicted", "x", None) and f"pid {hs_pid}" in db.events[-1][3]
    assert [e.kind for e in cand_events] == ["evicted"]
    loop(cand).campaign(cs)
    new = cand.lease("x")
    assert new is not None and new.epoch == 2


def test_a_renewal_stamped_by_another_session_does_not_keep_a_hung_holder() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    hung, hs, _ = manager(db, "r", ["x"], clock)
    loop(hung).campaign(hs)
    # A restarted process reusing the replica id heartbeats on its own (lock-less) session.
    db.now = 6.0
    db.replicas["r"] = (6.0, 4242)
    cand, cs, _ = manager(db, "cand", ["x"], clock)
    db.now = TTL + GRACE + 0.1
    loop(cand).campaign(cs)
    assert hs.closed


def test_a_row_not_describing_the_lock_holder_is_evicted_only_if_that_persists() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    _, hs, _ = manager(db, "h", ["x"], clock)
    db.locks["x"] = hs.backend_pid  # locked, but no epoch bump recorded for this session
    db.rows["x"] = Row(3, "old", 999, renewed_at=0.0)
    cand, cs, _ = manager(db, "cand", ["x"], clock)
    db.now = 100.0  # the row looks ancient, but it is not the lock holder's
    loop(cand).campaign(cs)
    assert not hs.closed
    clock.now = 100.0 + TTL + GRACE  # the mismatch has lasted the threshold, not more
    loop(cand).campaign(cs)
    assert not hs.closed
    clock.now = 100.0 + TTL + GRACE + 0.1
    loop(cand).campaign(cs)
    assert hs.closed


def test_an_epoch_bump_stuck_behind_fenced_writes_gives_the_locks_back_and_retries() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, events = manager(db, "a", ["x"], clock)
    db.rows_busy = True
    loop(m).campaign(s)
    assert m.held() == {} and db.locks == {} and events == []
    assert s.inbox == []  # given back quietly: nobody was waiting for a release
    db.rows_busy = False
    loop(m).campaign(s)
    assert m.lease("x") is not None


def test_release_notifies_waiters_and_records_it() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, a_events = manager(db, "a", ["x"], clock)
    loop(a).campaign(sa)
    lease = a.lease("x")
    b, sb, _ = manager(db, "b", ["x"], clock)
    loop(b).campaign(sb)
    a.step_down("x", cooldown=30)
    loop(a).run_commands(sa)
    assert lease is not None and lease.lost_reason == "step_down"
    assert ("released", "x", 1, "step_down") in db.events and db.rows["x"].released_at is not None
    assert a_events[-1].kind == "released"
    notes = sb.wait_notify(0.0)
    assert notes == ["x"]
    assert loop(b).on_notify(sb, notes[0])  # a waiter campaigns at once
    loop(a).campaign(sa)
    assert a.lease("x") is None  # the cooldown keeps the stepped-down holder away


def test_a_step_down_request_over_the_control_channel() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    a, sa, _ = manager(db, "a", ["x", "y"], clock)
    loop(a).campaign(sa)
    request = '{"action": "step_down", "lease": "y", "replica": null, "cooldown": 5}'
    assert not loop(a).on_notify(sa, request)
    assert set(a.held()) == {"x"} and "y" not in db.locks
    assert not loop(a).on_notify(sa, '{"action": "step_down", "lease": "x", "replica": "other"}')
    assert set(a.held()) == {"x"}


def test_shutdown_releases_and_marks_the_replica_stopped() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    loop(m).shutdown()
    assert db.locks == {} and s.closed
    # It says it is leaving in the hand-over's round trip, before the release NOTIFY, so
    # peers drop it from their placement view first (the next candidate then takes the
    # lease without a step).
    assert s.calls[-1] == "hand_over" and db.placement["a"].stopped
    assert s.inbox[0] == gone_payload("a", "stop") and s.inbox[1:] == ["x"]


def test_connection_loss_at_shutdown_still_drops_belief() -> None:
    db, clock = FakeDatabase(), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    lease = m.lease("x")
    s.broken = True
    loop(m).shutdown()
    assert lease is not None and not lease.valid() and s.closed


def test_the_safety_inequality_is_checked_on_the_sessions_tcp_settings() -> None:
    db = FakeDatabase()
    tight = FakeSession(db, 7, tcp=TcpBound(4, 1, 4, 6000, unix_socket=False))  # D_srv 6 s
    m = LeaseManager("a", ["x"], SETTINGS, dsn="fake", session_factory=lambda: tight)
    with pytest.raises(SafetyInequalityViolated, match="D_srv = 6.0s"):
        loop(m).connect()
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


# -- placement (leases.placement: spread) -----------------------------------------------------

SIX = [f"loop-{i}" for i in range(6)]
SPREAD = CoreSettings(
    leases=replace(
        SETTINGS.leases,
        placement="spread",
        placement_step=0.4,
        rebalance_after=3.0,
        rebalance_cooldown=5.0,
    )
)


def cluster(
    db: FakeDatabase, clock: FakeClock, ids: list[str], settings: CoreSettings = SPREAD
) -> dict[str, tuple[LeaseManager, FakeSession, list[LeaseEvent]]]:
    return {rid: manager(db, rid, SIX, clock, settings) for rid in ids}


def beat(*members: tuple[LeaseManager, FakeSession, list[LeaseEvent]]) -> None:
    """One heartbeat (and rebalance planning) of each member, as the thread does it."""
    for m, s, _ in members:
        loop(m).publish_candidacy(s)
        loop(m).heartbeat(s)
        loop(m).plan_rebalance()


def deliver(*members: tuple[LeaseManager, FakeSession, list[LeaseEvent]]) -> None:
    """Each member reads its notifications and campaigns if one asks for it."""
    for m, s, _ in members:
        if any([loop(m).on_notify(s, p) for p in s.wait_notify(0.0)]):
            loop(m).campaign(s)


def holdings(
    members: dict[str, tuple[LeaseManager, FakeSession, list[LeaseEvent]]],
) -> dict[str, set[str]]:
    return {rid: set(m.held()) for rid, (m, _, _) in members.items()}


def test_spread_each_replica_takes_only_what_placement_gives_it() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    held = holdings(members)
    assert [len(h) for h in held.values()] == [2, 2, 2]
    assert set().union(*held.values()) == set(SIX)
    a, sa, _ = members["a"]
    assert sorted(sa.watched) == sorted(set(SIX) - held["a"])  # watched, never tried
    assert a.core.state.free_since  # a campaigned first: b's and c's were still free then
    loop(a).campaign(sa)
    assert a.core.state.free_since == {}  # they are held now: nothing to wait for


def test_a_non_first_candidate_waits_rank_times_step_after_seeing_a_lease_free() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    lease = SIX[0]
    plan = members["a"][0].core.plan(members["a"][0].clock())
    second, third = (r.id for r in plan.ranking(lease)[1:])
    m, s, _ = members[third]
    loop(m).campaign(s)  # rank 2: sees the lease free, does not try it yet
    assert lease not in m.held() and lease in s.watched
    assert m.core.state.free_since[lease] == 100.0
    clock.now = 100.0 + 0.79
    assert loop(m).campaign(s) == 100.0 + 0.8  # when its turn comes (the thread campaigns then)
    assert lease not in m.held()
    clock.now = 100.0 + 0.8
    loop(m).campaign(s)
    assert lease in m.held()  # nobody better took it: it does


def test_a_better_replica_joining_gets_its_leases_handed_over_once_settled() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    loop(a[0]).campaign(a[1])
    assert set(a[0].held()) == set(SIX)  # alone: everything is its
    db.now, clock.now = 10.0, 110.0
    b, c = manager(db, "b", SIX, clock, SPREAD), manager(db, "c", SIX, clock, SPREAD)
    beat(a, b, c)
    loop(b[0]).campaign(b[1])
    loop(c[0]).campaign(c[1])
    assert b[0].held() == {} and c[0].held() == {}  # no overlap: the locks are a's
    assert a[0].core.state.handing_over == {}  # b and c are not settled yet
    db.now, clock.now = 12.9, 112.9
    beat(a, b, c)
    assert a[0].core.state.handing_over == {}
    db.now, clock.now = 13.0, 113.0  # live for rebalance_after
    beat(a, b, c)
    plan = a[0].core.plan(a[0].clock())
    moving = {n: t for n, t in plan.assignment.items() if t != "a"}
    assert len(moving) == 4 and a[0].core.state.handing_over == moving
    loop(a[0]).hand_over_idle(a[1])
    deliver(a, b, c)
    held = {"a": set(a[0].held()), "b": set(b[0].held()), "c": set(c[0].held())}
    assert [len(h) for h in held.values()] == [2, 2, 2]
    released = [e for e in db.events if e[0] == "released"]
    assert sorted(e[1] for e in released) == sorted(moving)
    assert all(e[3] == f"rebalance: to {moving[e[1]]}" for e in released)
    assert not any(e[0] == "evicted" for e in db.events)
    # Stable from now on: nobody hands anything on.
    db.now, clock.now = 60.0, 160.0
    beat(a, b, c)
    assert all(m.core.state.handing_over == {} for m, _, _ in (a, b, c))


def test_a_hand_over_names_its_receiver_in_the_releases_round_trip() -> None:
    """The announce is no longer a round trip of its own before the release: peers read it in
    the same batch as the release's NOTIFY (first), so their reservation starts when the
    lease is free and a slow release cannot use it up (issue 20: the lease moved twice). The
    receiver taking the lease ends every peer's reservation."""
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    loop(a[0]).campaign(a[1])
    db.now, clock.now = 10.0, 110.0
    b, c = manager(db, "b", SIX, clock, SPREAD), manager(db, "c", SIX, clock, SPREAD)
    beat(a, b, c)
    db.now, clock.now = 13.0, 113.0
    beat(a, b, c)
    moving = dict(a[0].core.state.handing_over)
    assert moving
    a[1].calls.clear()
    loop(a[0]).hand_over_idle(a[1])
    assert "announce" not in a[1].calls and "hand_over" in a[1].calls
    first = b[1].inbox[0]
    assert first.startswith("{") and '"hand_over"' in first  # before the releases
    deliver(a, b, c)
    assert all(n in m.held() for n, t in moving.items() for m, _, _ in (b, c) if m.replica_id == t)
    for m, sess, _ in (a, b, c):
        loop(m).campaign(sess)  # each sees the receiver holding the lease: its reservation ends
    assert all(n not in m.core.state.reserved for m, _, _ in (a, b, c) for n in moving)


def test_a_running_tick_delays_the_hand_over_and_no_tick_starts_meanwhile() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    loop(a[0]).campaign(a[1])
    b = manager(db, "b", SIX, clock, SPREAD)
    mine = {n for n, t in placement_of(a, b).items() if t == "b"}
    busy, idle = sorted(mine)[0], sorted(mine)[1:]
    busy_lease = a[0].lease(busy)
    assert busy_lease is not None and a[0].tick_begin(busy, busy_lease)
    db.now, clock.now = 10.0, 110.0
    beat(a, b)
    beat(a, b)  # the first round only stamped rows last seen 10 s ago (heartbeats are 1 s)
    assert set(a[0].core.state.handing_over) == mine
    idle_lease = a[0].lease(idle[0])
    assert idle_lease is not None and not a[0].tick_begin(idle[0], idle_lease)  # pending
    loop(a[0]).hand_over_idle(a[1])
    assert set(a[0].held()) == set(SIX) - set(idle)  # the busy one stays until its tick ends
    assert busy_lease.valid()
    a[0].tick_end(busy)
    loop(a[0]).hand_over_idle(a[1])
    assert set(a[0].held()) == set(SIX) - mine and not busy_lease.valid()
    assert busy_lease.lost_reason == "rebalance: to b"
    assert not a[0].tick_begin(busy, busy_lease)  # a released lease never starts a tick


def placement_of(*members: tuple[LeaseManager, FakeSession, list[LeaseEvent]]) -> dict[str, str]:
    beat(*members)
    return members[0][0].core.plan(members[0][0].clock()).assignment


def test_a_lease_received_stays_for_the_cooldown_no_ping_pong() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    loop(a[0]).campaign(a[1])
    db.now, clock.now = 10.0, 110.0
    b = manager(db, "b", SIX, clock, SPREAD)
    db.now, clock.now = 13.0, 113.0
    beat(a, b)
    loop(a[0]).hand_over_idle(a[1])
    deliver(a, b)
    got = set(b[0].held())
    assert len(got) == 3
    # b's view now says a should hold them back (a's candidacy looks different to b only if
    # something changed; simulate the worst case: a preferred holder flips to a).
    db.placement["a"].preferred_for = list(got)
    db.now, clock.now = 14.0, 114.0
    beat(b)
    assert b[0].core.state.handing_over == {}  # within rebalance_cooldown of receiving them
    db.now, clock.now = 18.0, 118.0
    beat(a, b)
    assert set(b[0].core.state.handing_over) == got  # after it: one deliberate move back
    moves = [e for e in db.events if e[0] == "released"]
    assert len(moves) == 3


def test_a_crashed_holders_leases_go_to_the_next_ranked_survivor_at_once() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    lost = set(members["c"][0].held())
    db.terminate(members["c"][1].backend_pid)  # kill -9: the server ends its session
    survivors = [members["a"], members["b"]]
    db.now, clock.now = 1.0, 101.0
    beat(*survivors)  # c's session is gone: not live any more, ranks recomputed
    for m, s, _ in survivors:
        loop(m).campaign(s)
    held = set(members["a"][0].held()) | set(members["b"][0].held())
    assert held == set(SIX) and lost <= held


def test_a_crash_seen_before_the_next_heartbeat_costs_one_step_at_most() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    lease = sorted(members["c"][0].held())[0]
    plan = members["a"][0].core.plan(members["a"][0].clock())
    nxt = plan.ranking(lease)[1].id  # c is still rank 0 in the survivors' stale view
    db.terminate(members["c"][1].backend_pid)
    m, s, _ = members[nxt]
    loop(m).campaign(s)
    assert lease not in m.held()
    clock.now = 100.0 + SPREAD.leases.placement_step
    loop(m).campaign(s)
    assert lease in m.held()


def test_a_suspended_lease_is_not_campaigned_for_and_peers_stop_ranking_us() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b"])
    beat(*members.values())
    a, sa, _ = members["a"]
    loop(a).campaign(sa)
    lease = sorted(a.held())[0]
    a.abandon(lease, "wedged_tick")
    loop(a).run_commands(sa)
    beat(members["a"])
    assert lease not in db.placement["a"].campaigns_for and "replica_candidacy" in sa.calls
    loop(a).campaign(sa)
    assert lease not in a.held() and lease not in sa.watched
    b, sb, _ = members["b"]
    beat(members["b"])
    assert b.core.plan(b.clock()).choose(lease) == "b"
    loop(b).campaign(sb)
    assert lease in b.held()
    a.resume(lease)
    beat(members["a"])
    assert lease in db.placement["a"].campaigns_for


def test_a_step_down_cooldown_takes_the_replica_out_of_the_ranking_meanwhile() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b"])
    beat(*members.values())
    a, sa, _ = members["a"]
    loop(a).campaign(sa)
    lease = sorted(a.held())[0]
    a.step_down(lease, cooldown=30)
    loop(a).run_commands(sa)
    beat(members["a"])
    assert lease not in db.placement["a"].campaigns_for
    clock.now = 131.0
    beat(members["a"])
    assert lease in db.placement["a"].campaigns_for


def test_requires_labels_and_preferred_holder_from_the_configuration() -> None:
    from leasectl.settings import LoopPlacement

    settings = CoreSettings(
        leases=replace(
            SPREAD.leases,
            loops={
                "loop-0": LoopPlacement(requires_labels=("hsm",)),
                "loop-1": LoopPlacement(preferred_holder="zone-b"),
            },
        )
    )
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    s_a, s_b = db.session(), db.session()
    a = LeaseManager("a", SIX, settings, dsn="fake", clock=clock, session_factory=lambda: s_a)
    b = LeaseManager(
        "b",
        SIX,
        settings,
        dsn="fake",
        clock=clock,
        session_factory=lambda: s_b,
        labels=["hsm", "zone-b"],
    )
    assert a.excluded == {"loop-0": ("hsm",)} and "loop-0" not in a.wanted
    assert b.preferred_for == ["loop-1"]
    loop(a).session, loop(b).session = loop(a).connect(), loop(b).connect()
    assert "loop-0" not in db.placement["a"].campaigns_for
    assert db.placement["b"].preferred_for == ["loop-1"]
    members: list[tuple[LeaseManager, FakeSession, list[LeaseEvent]]] = [(a, s_a, []), (b, s_b, [])]
    beat(*members)
    loop(a).campaign(s_a)
    loop(b).campaign(s_b)
    assert "loop-0" in b.held() and "loop-1" in b.held()


def test_pack_placement_is_the_plain_race() -> None:
    pack = CoreSettings(leases=replace(SPREAD.leases, placement="pack"))
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"], pack)
    beat(*members.values())
    a, sa, _ = members["a"]
    assert a.replicas() is None  # the heartbeat did not even ask who is live
    loop(a).campaign(sa)
    assert set(a.held()) == set(SIX)
    db.now, clock.now = 100.0, 200.0
    beat(*members.values())
    assert a.core.state.handing_over == {}


def test_a_replica_wide_step_down_drains_the_replica_for_the_cooldown() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b"])
    beat(*members.values())
    a, sa, _ = members["a"]
    loop(a).campaign(sa)
    request = '{"action": "step_down", "lease": null, "replica": "a", "cooldown": 8}'
    loop(a).on_notify(sa, request)
    assert a.held() == {}
    beat(members["a"])
    assert db.placement["a"].campaigns_for == []  # away from every lease, not only its own
    b, sb, _ = members["b"]
    beat(members["b"])
    loop(b).campaign(sb)
    assert set(b.held()) == set(SIX)
    clock.now = 108.0
    beat(members["a"])
    assert db.placement["a"].campaigns_for == sorted(SIX)


# -- crash takeover: the watch ring and replica_gone -------------------------------------------


def gone(db: FakeDatabase, replica: str) -> None:
    """What a watcher's ``watch_replica`` statement sends when ``replica``'s session ends."""
    db.notify("leasectl_control", gone_payload(replica, "session_ended"))


def test_every_live_replica_is_watched_by_its_successor_in_the_ring() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    assert all(m.watch_target() is None for m, _, _ in members.values())  # no view yet
    beat(*members.values())
    targets = {rid: m.watch_target() for rid, (m, _, _) in members.items()}
    assert targets == {"a": "b", "b": "c", "c": "a"}
    gone(db, "b")
    deliver(members["a"])
    assert members["a"][0].watch_target() == "c"  # b's watcher now watches b's successor


def test_a_replica_alone_or_packing_watches_nobody() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    assert a[0].watch_target() is None
    pack = CoreSettings(leases=replace(SPREAD.leases, placement="pack"))
    members = cluster(FakeDatabase(now=0.0), clock, ["p", "q"], pack)
    beat(*members.values())
    assert all(m.watch_target() is None for m, _, _ in members.values())
    assert all("hold_replica" not in s.calls for _, s, _ in members.values())


def test_a_crashed_holder_reported_gone_is_taken_by_its_next_candidate_without_a_step() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    lost = set(members["c"][0].held())
    plan = members["a"][0].core.plan(members["a"][0].clock())
    heirs = {n: next(r.id for r in plan.ranking(n) if r.id != "c") for n in lost}
    db.terminate(members["c"][1].backend_pid)  # kill -9: the server ends its session...
    gone(db, "c")  # ...and c's watcher (b) is woken and tells everyone
    survivors = [members["a"], members["b"]]
    deliver(*survivors)  # the clock has not moved: no placement step was waited
    for name, heir in heirs.items():
        assert name in members[heir][0].held()
    assert "c" not in {r.id for r in members["a"][0].replicas() or []}


def test_a_hand_over_receiver_gone_before_taking_frees_its_reservation() -> None:
    """A rebalance reserves the leases it hands over for their receiver for a few placement
    steps; a receiver that crashes meanwhile must not make its heirs wait the reservation out
    (seen in bench/leader.py: a kill right after a hand-over took 2.2 s instead of ms)."""
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    a = manager(db, "a", SIX, clock, SPREAD)
    beat(a)
    loop(a[0]).campaign(a[1])
    db.now, clock.now = 10.0, 110.0
    b, c = manager(db, "b", SIX, clock, SPREAD), manager(db, "c", SIX, clock, SPREAD)
    beat(a, b, c)
    db.now, clock.now = 13.0, 113.0  # b and c live for rebalance_after: a hands over
    beat(a, b, c)
    to_b = sorted(n for n, t in a[0].core.state.handing_over.items() if t == "b")
    assert to_b
    loop(a[0]).hand_over_idle(a[1])
    db.terminate(b[1].backend_pid)  # b dies before it takes what it was handed
    gone(db, "b")
    deliver(a, c)  # the clock has not moved: the reservation for b has not run out
    held = set(a[0].held()) | set(c[0].held())
    assert set(to_b) <= held, (to_b, held)


def test_a_crash_said_again_and_again_campaigns_once() -> None:
    """Pooled standbys say a holder's crash at every poll until its lease is taken: the
    first word drops it from the view and campaigns, the repeats change nothing."""
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c"])
    beat(*members.values())
    a, sa, _ = members["a"]
    db.terminate(members["c"][1].backend_pid)
    said = gone_payload("c", "crash seen by a standby")
    assert loop(a).on_notify(sa, said)  # campaign now
    assert "c" not in {r.id for r in a.replicas() or []}
    assert not loop(a).on_notify(sa, said)
    clock.now += TTL  # a crash of the same id after lease_ttl is news again
    assert loop(a).on_notify(sa, said)


def test_a_lower_ranked_replica_keeps_its_placement_delay_after_a_gone() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b", "c", "d"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    lease = sorted(members["d"][0].held())[0]
    plan = members["a"][0].core.plan(members["a"][0].clock())
    rest = [r.id for r in plan.ranking(lease) if r.id != "d"]
    db.terminate(members["d"][1].backend_pid)
    gone(db, "d")
    lm = members[rest[-1]]
    deliver(lm)  # the lowest-ranked survivor hears first: it only starts its wait
    assert lease not in lm[0].held() and lm[0].core.state.free_since[lease] == clock.now
    deliver(*(members[r] for r in rest[:-1]))
    assert lease in members[rest[0]][0].held()


def test_a_graceful_stop_hands_over_to_the_next_candidate_without_a_step() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    members = cluster(db, clock, ["a", "b"])
    beat(*members.values())
    for m, s, _ in members.values():
        loop(m).campaign(s)
    a, sa, _ = members["a"]
    mine = set(a.held())
    assert mine  # a ranks first for these: b would wait a step if it still ranked a
    loop(a).shutdown()
    deliver(members["b"])
    assert mine <= set(members["b"][0].held())


def test_the_liveness_lock_is_retried_at_each_heartbeat_until_held() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    db.liveness["a"] = 999  # a crashed predecessor's session, not ended yet
    a = manager(db, "a", SIX, clock, SPREAD)
    assert not loop(a[0]).holds_liveness
    beat(a)
    assert not loop(a[0]).holds_liveness
    del db.liveness["a"]  # the server ended it
    beat(a)
    assert loop(a[0]).holds_liveness and db.liveness["a"] == a[1].backend_pid
    calls = len(a[1].calls)
    beat(a)
    assert "hold_replica" not in a[1].calls[calls:]  # held: not asked again


# -- idle cost: one wait until the next deadline, woken by commands -----------------------------


def readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_the_thread_waits_until_its_next_deadline_in_one_wait() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    s.on_wait = shared(m).stop.set
    loop(m).serve(s)
    ls = SETTINGS.leases
    lo, hi = (
        ls.acquire_interval * (1 - ls.acquire_jitter),
        ls.acquire_interval * (1 + ls.acquire_jitter),
    )
    assert len(s.waits) == 1 and lo <= s.waits[0] <= hi  # the campaign is next, not a slice


def test_commands_stop_and_a_pending_hand_over_wake_the_thread() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x", "y"], clock)
    loop(m).campaign(s)
    fd = shared(m).waker.fd
    assert not readable(fd)
    commands: tuple[Callable[[], None], ...] = (
        lambda: m.step_down("x"),
        lambda: m.abandon("y", "wedged_tick"),
        lambda: m.resume("y"),
        lambda: m.report_wedged(["y"]),
        m.stop,
    )
    for command in commands:
        command()
        assert readable(fd)
        shared(m).waker.drain()
        assert not readable(fd)
    lease = m.lease("x")
    assert lease is not None and m.tick_begin("x", lease)
    m.tick_end("x")
    assert not readable(fd)  # nothing waited for that tick
    assert m.tick_begin("x", lease)
    m.core.state.handing_over["x"] = "b"
    m.tick_end("x")
    assert readable(fd)  # the hand-over waited for it: now


def test_a_command_queued_before_the_wait_is_not_lost() -> None:
    db, clock = FakeDatabase(now=0.0), FakeClock(100.0)
    m, s, _ = manager(db, "a", ["x"], clock)
    loop(m).campaign(s)
    s.on_wait = shared(m).stop.set
    m.step_down("x")  # queued before the loop runs: executed before any wait
    loop(m).serve(s)
    assert "x" not in m.held() and ("released", "x", 1, "step_down") in db.events


# -- pooled standby: when a standby asks for a changed live view -------------------------------

POOLED = CoreSettings(leases=replace(SPREAD.leases, standby="pooled"))


def standby_with_view(clock: FakeClock, n: int) -> tuple[LeaseManager, list[str]]:
    """The standby (no session) farthest from the top of both leases' orders in a view of
    ``n`` replicas that all campaign for SIX[:2], and the view's ids best-first for SIX[0]."""
    view = [Replica(f"r{i}", frozenset(SIX[:2])) for i in range(n)]
    far = max(view, key=lambda r: min(hrw_position(n, r.id, view) or 0 for n in SIX[:2]))
    assert min(hrw_position(n, far.id, view) or 0 for n in SIX[:2]) > 10
    order = [r.id for r in ranking(SIX[0], view)]
    return LeaseManager(far.id, SIX[:2], POOLED, dsn="fake", clock=clock), order


def seen(m: LeaseManager, ids: list[str], view_hash: str = "h1") -> None:
    m.core.set_view([Replica(rid, frozenset(SIX[:2])) for rid in ids])
    m.core.view_hash = view_hash


def test_a_far_standby_asks_for_a_changed_view_only_when_its_own_turn_comes() -> None:
    clock = FakeClock(100.0)
    m, order = standby_with_view(clock, 40)
    assert m.core.want_view(m.candidacy(), m.clock())  # no view yet: it must ask
    seen(m, order)
    m.core.view_due = clock.now + 10.0
    # Far from the top of both leases' orders: one or two replicas leaving cannot make it a choice
    # or a heir, so a change waits for its turn, however long the cluster was quiet before.
    assert not m.core.want_view(m.candidacy(), m.clock())
    clock.now += 9.9
    assert not m.core.want_view(m.candidacy(), m.clock())
    clock.now += 0.2
    assert m.core.want_view(m.candidacy(), m.clock())


def test_a_standby_near_the_top_or_a_long_free_lease_asks_at_once() -> None:
    clock = FakeClock(100.0)
    m, order = standby_with_view(clock, 40)
    near = LeaseManager(order[2], SIX[:2], POOLED, dsn="fake", clock=clock)
    for x in (m, near):
        seen(x, order)
        x.core.view_due = clock.now + 10.0
    # third for SIX[0]: a heir after two leave
    assert near.core.want_view(near.candidacy(), near.clock())
    assert not m.core.want_view(m.candidacy(), m.clock())
    # A lease seen free: only after (M + 2) placement steps (M = 2 leases here) did the
    # replicas ranked before this one fail to take it; then every standby looks.
    m.core.state.free_since[SIX[1]] = clock.now
    clock.now += (2 + 2) * POOLED.leases.placement_step - 0.01
    assert not m.core.want_view(m.candidacy(), m.clock())
    clock.now += 0.02
    assert m.core.want_view(m.candidacy(), m.clock())


def test_a_standby_back_from_a_step_down_cooldown_near_the_top_asks_at_once() -> None:
    """Its distance from the top depends on its own candidacy too, not only on the view: a
    cooldown ending (no new view) brings it back near the top of a lease's order."""
    clock = FakeClock(100.0)
    _, order = standby_with_view(clock, 40)
    near = LeaseManager(order[2], SIX[:2], POOLED, dsn="fake", clock=clock)
    seen(near, order)
    near.core.view_due = clock.now + 10.0
    for name in SIX[:2]:
        near.core.state.cooldown_until[name] = clock.now + 5.0
    # a candidate for nothing meanwhile
    assert not near.core.want_view(near.candidacy(), near.clock())
    clock.now += 5.0
    assert near.core.want_view(near.candidacy(), near.clock())
