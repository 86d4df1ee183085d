"""The watch connection beside CREATE INDEX CONCURRENTLY: it cannot hurt (docs/safety.md).

A replica's watch connection (:class:`leasectl.locks.WatchSession`) waits inside the server for
a peer's lock session to end: ``pg_advisory_xact_lock`` on the peer's liveness lock in a
one-statement transaction under its own ``lock_timeout``, re-issued when that fires. The reasons
the lease core otherwise never blocks are checked here on a real server, as correctness (no
timing assertions):

* a ``CREATE INDEX CONCURRENTLY`` started while the watcher waits does wait for the watcher's
  snapshot, finishes once that one statement is over (its wait was re-issued, as a new
  transaction CIC does not wait for), while the watcher keeps waiting: no deadlock;
* the watcher's ``backend_xmin`` never lives longer than one ``lock_timeout`` (+ slack);
* the migration lock keeps pure try-lock polling: a migrator waiting for it is never inside a
  lock wait, so the migration holder's own CIC (beside a watcher too) completes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl.keys import MIGRATIONS_LEASE, as_oid
from leasectl.locks import LockSession, WatchSession, replica_key, replica_namespace
from leasectl.migrate import migrate
from leasectl.settings import DatabaseSettings
from tests.conftest import wait_until

LOCK_TIMEOUT_MS = 1000
SLACK_S = 1.0  # a loaded CI machine: statement start to first sample, sampling gaps

SAMPLE_SQL = """
SELECT pid, application_name, backend_xmin IS NOT NULL,
       extract(epoch FROM clock_timestamp() - xact_start)::float8,
       wait_event_type, wait_event, left(query, 80)
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""

WAITING_SQL = """
SELECT count(*) FROM pg_locks
WHERE pid = %(pid)s AND locktype = 'advisory' AND NOT granted
  AND classid = %(ns)s::bigint::oid AND objid = %(key)s::bigint::oid AND objsubid = 2
"""


@dataclass
class Sample:
    pid: int
    app: str
    has_xmin: bool
    xact_age_s: float | None
    wait_type: str | None
    wait_event: str | None
    query: str


@dataclass
class Sampler:
    """pg_stat_activity every few milliseconds, on its own connection, until stopped."""

    dsn: str
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.005):
                for row in conn.execute(SAMPLE_SQL).fetchall():
                    self.samples.append(Sample(*row))

    def of(self, pid: int) -> list[Sample]:
        return [s for s in self.samples if s.pid == pid]


@dataclass
class Watcher:
    """A watch connection waiting on ``peer`` in a loop, as the ``leasectl-watch`` thread."""

    session: WatchSession
    peer: str
    results: list[bool | None] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.results.append(self.session.watch(self.peer))
        except BaseException as exc:  # surfaced by the test's assertions
            self.errors.append(exc)

    def waiting(self, conn: psycopg.Connection[Any]) -> bool:
        params = {
            "pid": self.session.backend_pid,
            "ns": as_oid(replica_namespace("leasectl")),
            "key": as_oid(replica_key(self.peer)),
        }
        row = conn.execute(WAITING_SQL, params).fetchone()
        return bool(row and row[0])


def _start(target: Any) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


@pytest.fixture
def watched_peer(empty_dsn: str) -> Iterator[tuple[LockSession, Watcher, Sampler]]:
    """A live peer holding its liveness lock, a watcher waiting on it, and a sampler."""
    db = DatabaseSettings()
    peer = LockSession.connect(empty_dsn, db, "leasectl/peer", check_pooler=False)
    assert peer.hold_replica("peer")
    session = WatchSession.connect(
        empty_dsn, db, "leasectl/me/watch", lock_timeout_ms=LOCK_TIMEOUT_MS
    )
    watcher = Watcher(session, "peer")
    sampler = Sampler(empty_dsn)
    threads = [_start(watcher.run), _start(sampler.run)]
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        wait_until(lambda: watcher.waiting(conn), timeout=10, what="the watcher waits on peer")
    try:
        yield peer, watcher, sampler
    finally:
        watcher.stop.set()
        session.cancel()
        sampler.stop.set()
        for t in threads:
            t.join(10)
        session.close()
        peer.close()


def _assert_xmin_bounded(sampler: Sampler, watcher: Watcher) -> None:
    mine = [s for s in sampler.of(watcher.session.backend_pid) if s.has_xmin]
    assert mine, "the watcher was never sampled holding a snapshot"
    oldest = max(s.xact_age_s or 0.0 for s in mine)
    assert oldest <= LOCK_TIMEOUT_MS / 1000 + SLACK_S, (oldest, mine[-5:])


def test_cic_beside_a_waiting_watcher_finishes_and_the_watcher_keeps_waiting(
    watched_peer: tuple[LockSession, Watcher, Sampler], empty_dsn: str
) -> None:
    _peer, watcher, sampler = watched_peer
    with psycopg.connect(empty_dsn, autocommit=True, application_name="cic") as cic:
        cic.execute("CREATE TABLE cic_t (v int)")
        cic.execute("INSERT INTO cic_t SELECT generate_series(1, 1000)")
        cic_pid = cic.info.backend_pid
        before = len(watcher.results)
        # Started while the watcher's statement (and snapshot) is running: CIC must wait for
        # that transaction to end. Raises on a deadlock; returns only once it is done.
        cic.execute("CREATE INDEX CONCURRENTLY cic_t_v ON cic_t (v)")
        # The watcher's statement ended before CIC could finish; its thread records that a
        # moment later (it may not have run yet when CIC returns).
        wait_until(lambda: watcher.results[before:], timeout=10, what="the watcher's wait ended")
        reissued = watcher.results[before:]
        valid = cic.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'cic_t_v'::regclass"
        ).fetchone()
        assert valid == (True,)
        # CIC really was held up by the watcher's snapshot (a wait on its virtual xid)...
        assert any(s.wait_event == "virtualxid" for s in sampler.of(cic_pid))
        # ... and finished once that one statement ended and was re-issued (lock_timeout,
        # None), not because the watcher stopped: the peer is alive, it keeps waiting.
        assert reissued and all(r is None for r in reissued), reissued
        wait_until(lambda: watcher.waiting(cic), timeout=10, what="the watcher waits again")
    assert watcher.errors == [] and True not in watcher.results
    _assert_xmin_bounded(sampler, watcher)


def test_the_watcher_is_woken_when_the_peer_session_ends_and_tells_everyone(
    watched_peer: tuple[LockSession, Watcher, Sampler], empty_dsn: str
) -> None:
    peer, watcher, _sampler = watched_peer
    with psycopg.connect(empty_dsn, autocommit=True) as listener:
        listener.execute("LISTEN leasectl_control")
        peer.close()  # the server ends the session: its liveness lock goes with it
        wait_until(lambda: True in watcher.results, timeout=10, what="the watcher woken")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got and '"replica_gone"' in got[0] and '"peer"' in got[0]
    # Afterwards the lock is free: a watch returns False at once (nothing to wait for, and
    # nothing sent: the leasectl-watch thread then waits for its next view, no spinning).
    wait_until(lambda: False in watcher.results, timeout=10, what="a watch of a free lock")
    assert watcher.results.index(False) > watcher.results.index(True)


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_the_migration_lock_keeps_try_lock_polling_beside_cic_and_a_watcher(
    watched_peer: tuple[LockSession, Watcher, Sampler], empty_dsn: str, tmp_path: Path
) -> None:
    _peer, watcher, sampler = watched_peer
    d = _write(
        tmp_path / "m",
        {
            "0001_t.up.sql": "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\n",
            "0002_idx.up.sql": (
                "-- leasectl: no-transaction\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
            ),
        },
    )
    db = DatabaseSettings()
    # Another migrator holds the migration lock and runs a CIC of its own meanwhile: a
    # second migrator blocked inside pg_advisory_lock would hold a snapshot that CIC waits
    # for, while it waits for the lock: the deadlock the try-lock polling avoids.
    holder = LockSession.connect(empty_dsn, db, "leasectl-migrate/holder", check_pooler=False)
    assert holder.try_acquire([MIGRATIONS_LEASE]) == {MIGRATIONS_LEASE}
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            applied.append(migrate(empty_dsn, directory=d, applied_by="second"))
        except BaseException as exc:
            errors.append(exc)

    t = _start(second)
    with psycopg.connect(empty_dsn, autocommit=True, application_name="cic2") as cic:
        wait_until(
            lambda: any(s.app.startswith("leasectl-migrate/second") for s in sampler.samples),
            timeout=20,
            what="the second migrator polls",
        )
        cic.execute("CREATE TABLE other (v int)")
        cic.execute("CREATE INDEX CONCURRENTLY other_v ON other (v)")  # no deadlock
        assert not applied and not errors  # still waiting for the lock
    holder.close()
    t.join(60)
    assert errors == [] and applied == [["0001_t", "0002_idx"]]
    second_pids = {s.pid for s in sampler.samples if s.app.startswith("leasectl-migrate/second")}
    polled = [s for s in sampler.samples if s.pid in second_pids]
    assert polled and not any(s.wait_type == "Lock" for s in polled), [
        s for s in polled if s.wait_type == "Lock"
    ]
    assert watcher.errors == [] and True not in watcher.results
    _assert_xmin_bounded(sampler, watcher)
