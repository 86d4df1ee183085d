"""``leasectl loop pause | resume | trigger`` against a real cluster of ``leasectl run`` processes.

The loops (tests/cli/cluster_loops) tick every 0.5 s: ``alpha`` and ``beta`` leased (one
ledger row per slot), ``everywhere`` on every replica (a ``tick_finished`` log line each).
Absence of ticks is asserted over a window after a deadline, never by a bare sleep: the
window is as long as several ticks, so a loop that still ran would show.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tests.cli.conftest import LEASECTL, Cluster, cli_env, kill_group, run_cli, settled
from tests.conftest import REPO, wait_until

INTERVAL = 0.5


def db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


def ticks_since(dsn: str, loop: str, since: datetime) -> list[tuple[Any, ...]]:
    """Scheduled (not triggered) ledger rows of ``loop`` started after ``since``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(
            "SELECT tick_at, replica, epoch, started_at FROM leasectl_ticks "
            "WHERE loop = %s AND started_at > %s AND trigger_id IS NULL ORDER BY started_at",
            (loop, since),
        ).fetchall()


def assert_quiet(dsn: str, loop: str, since: datetime, window: float) -> None:
    """No tick of ``loop`` started after ``since`` during ``window`` seconds."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        rows = ticks_since(dsn, loop, since)
        assert not rows, f"{loop} ticked while paused: {rows}"
        time.sleep(0.1)


def wait_ticking(dsn: str, loop: str, since: datetime, n: int = 2) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = wait_until(
        lambda: (r := ticks_since(dsn, loop, since)) and len(r) >= n and r,
        timeout=20,
        interval=0.1,
        what=f"{loop} ticking after {since}",
    )
    return rows


def holder(cluster: Cluster, lease: str) -> tuple[str | None, int | None]:
    return cluster.wait_all_held()[lease]


def events(dsn: str, event: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(
            "SELECT lease, replica, reason FROM leasectl_lease_events WHERE event = %s ORDER BY id",
            (event,),
        ).fetchall()


def test_pause_holds_across_kill_and_restart_and_resume_waits_for_next_slot(
    make_cluster: Callable[[int], Cluster],
) -> None:
    cluster = make_cluster(3)
    dsn = cluster.dsn
    wait_ticking(dsn, "alpha", db_now(dsn))

    res = cluster.cli("loop", "pause", "alpha", "--reason", "mailer incident", "--by", "alice")
    assert res.returncode == 0, res.stderr
    assert "alpha paused on every replica" in res.stdout
    paused = db_now(dsn)
    # The holder stops within a second: nothing starts after the first second.
    assert_quiet(dsn, "alpha", paused_plus(paused, 1.0), 3.0)
    assert ("alpha", "alice", "mailer incident") in events(dsn, "loop_paused")
    before = settled(cluster)["alpha"]  # placement done moving leases: kill the holder
    status = cluster.cli("status")
    assert "alpha" in status.stdout and "mailer incident" in status.stdout, status.stdout

    # The holder dies: its successor keeps the loop paused (and beta keeps ticking).
    assert before[0] is not None
    kill_group(cluster.replicas[before[0]].proc)
    wait_until(
        lambda: (h := cluster.holders().get("alpha")) and h[1] > before[1],  # type: ignore[operator]
        timeout=20,
        interval=0.1,
        what="alpha taken over after SIGKILL",
    )
    mark = db_now(dsn)
    assert_quiet(dsn, "alpha", paused, 3.0)
    wait_ticking(dsn, "beta", mark)

    # A full restart: every replica reads the pause row at start.
    cluster.stop_all()
    for rid in ("r1", "r2", "r3"):
        cluster.start(rid)
    cluster.wait_all_held()
    mark = db_now(dsn)
    wait_ticking(dsn, "beta", mark)
    assert_quiet(dsn, "alpha", paused, 2.0)

    resumed_from = db_now(dsn)
    res = cluster.cli("loop", "resume", "alpha")
    assert res.returncode == 0, res.stderr
    assert "paused by alice (mailer incident)" in res.stdout
    rows = wait_ticking(dsn, "alpha", resumed_from, n=1)
    # The slot that was running when the resume came is not run late: the next one is.
    assert rows[0][0] > resumed_from, rows
    again = cluster.cli("loop", "resume", "alpha")
    assert again.returncode == 1 and "not paused" in again.stdout


def paused_plus(at: datetime, seconds: float) -> datetime:
    return at + timedelta(seconds=seconds)


def test_trigger_runs_exactly_once_across_a_graceful_hand_over(
    make_cluster: Callable[[int], Cluster],
) -> None:
    cluster = make_cluster(3)
    dsn = cluster.dsn
    # Paused, so the only alpha ticks are the triggered ones (a trigger runs while paused).
    assert cluster.cli("loop", "pause", "alpha", "--reason", "quiet").returncode == 0
    ids = []
    for _ in range(3):
        before = holder(cluster, "alpha")
        res = cluster.cli("loop", "trigger", "alpha", "--reason", "run the CRL now")
        assert res.returncode == 0, res.stderr
        ids.append(int(res.stdout.split("trigger ")[1].split()[0]))
        # A graceful hand-over right behind the trigger.
        assert before[0] is not None
        # (a short cooldown: three step-downs in a row must not leave every replica away)
        cluster.cli("step-down", "--lease", "alpha", "--wait", "0", "--cooldown", "1")
        wait_until(lambda: claimed(dsn, ids[-1]), timeout=20, interval=0.1, what="trigger claimed")
    with psycopg.connect(dsn, autocommit=True) as c:
        wait_until(
            lambda: (
                c.execute(
                    "SELECT count(*) FROM leasectl_ticks "
                    "WHERE trigger_id = ANY(%s) AND outcome = 'ok'",
                    (ids,),
                ).fetchone()
                == (len(ids),)
            ),
            timeout=20,
            interval=0.1,
            what="every triggered tick done",
        )
        # Settle past several ticks: nobody runs a trigger twice.
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            rows = c.execute(
                "SELECT trigger_id, count(*) FROM leasectl_ticks WHERE trigger_id = ANY(%s) "
                "GROUP BY trigger_id",
                (ids,),
            ).fetchall()
            assert sorted(rows) == [(i, 1) for i in sorted(ids)], rows
            time.sleep(0.1)
        claims = c.execute(
            "SELECT t.claimed_by, k.replica, t.claimed_epoch, k.epoch "
            "FROM leasectl_loop_triggers t JOIN leasectl_ticks k ON k.trigger_id = t.id "
            "WHERE t.id = ANY(%s)",
            (ids,),
        ).fetchall()
    assert all(by == rep and e1 == e2 for by, rep, e1, e2 in claims), claims
    assert [e[0] for e in events(dsn, "loop_triggered")] == ["alpha"] * 3
    history = cluster.cli("status", "--loop", "alpha")
    assert history.stdout.count("ok (triggered)") == 3, history.stdout

    # An everywhere loop's trigger runs once on every replica.
    since = time.time()
    res = cluster.cli("loop", "trigger", "everywhere")
    assert res.returncode == 0, res.stderr
    tid = int(res.stdout.split("trigger ")[1].split()[0])
    wait_until(
        lambda: sorted(triggered_on(cluster, tid)) == ["r1", "r2", "r3"],
        timeout=20,
        interval=0.2,
        what="everywhere trigger on r1..r3",
    )
    assert time.time() - since < 20


def claimed(dsn: str, tid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(
            "SELECT claimed_at IS NOT NULL FROM leasectl_loop_triggers WHERE id = %s", (tid,)
        ).fetchone()
    return bool(row and row[0])


def triggered_on(cluster: Cluster, tid: int) -> list[str]:
    """Replicas whose log shows a finished tick of trigger ``tid``."""
    out = []
    for rid, replica in cluster.replicas.items():
        for line in replica.log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("action") == "tick_finished" and rec.get("trigger") == tid:
                out.append(rid)
    return out


def test_pause_all_freezes_every_loop_and_unknown_names_are_refused(
    make_cluster: Callable[[int], Cluster],
) -> None:
    cluster = make_cluster(2)
    dsn = cluster.dsn
    res = cluster.cli("loop", "pause", "--all", "--reason", "maintenance window")
    assert res.returncode == 0, res.stderr
    assert "every loop paused" in res.stdout
    frozen = paused_plus(db_now(dsn), 1.0)
    assert_quiet(dsn, "alpha", frozen, 2.0)
    assert_quiet(dsn, "beta", frozen, 0.5)
    status = cluster.cli("status")
    assert "every loop" in status.stdout and "maintenance window" in status.stdout, status.stdout

    res = cluster.cli("loop", "resume", "--all", "--at", "+1s")
    assert res.returncode == 0, res.stderr
    mark = db_now(dsn)
    wait_ticking(dsn, "alpha", mark)
    wait_ticking(dsn, "beta", mark)

    bad = cluster.cli("loop", "pause", "alpah")
    assert bad.returncode == 2, bad
    assert "unknown loop 'alpah'" in bad.stderr
    assert "alpha, beta, everywhere" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cluster.cli("loop", "trigger", "nosuch")
    assert bad.returncode == 2 and "alpha, beta, everywhere" in bad.stderr
    bad = cluster.cli("loop", "resume", "--all", "--at", "tomorrow-ish")
    assert bad.returncode == 2 and "--at 'tomorrow-ish'" in bad.stderr
    # The timed resume has passed: no pause in force is left.
    with psycopg.connect(dsn, autocommit=True) as c:
        wait_until(
            lambda: (
                c.execute(
                    "SELECT count(*) FROM leasectl_loop_pauses WHERE resume_at > now()"
                ).fetchone()
                == (0,)
            ),
            timeout=5,
            what="timed resume passed",
        )


def test_pause_now_stops_a_running_tick(dsn: str, tmp_path: Path) -> None:
    """``--now``: the running tick's ``ctx.check()`` raises; without it the tick would run
    for 30 s. The slot is recorded ``cancelled`` (a resume may run it again)."""
    env = cli_env(
        LEASECTL_DSN=dsn,
        LEASECTL_APP="tests.apps.slow_tick:app",
        LEASECTL_SCHEDULER__SHUTDOWN_GRACE="1",
    )
    log = tmp_path / "slow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [LEASECTL, "run", "--replica-id", "s1", "--metrics-listen", ""],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    try:
        running = wait_until(
            lambda: query1(dsn, "SELECT tick_at FROM leasectl_ticks WHERE outcome = 'running'"),
            timeout=60,
            interval=0.1,
            what="a tick of slow running",
        )
        asked = time.monotonic()
        res = run_cli("loop", "pause", "slow", "--now", "--reason", "stop it", env=env)
        assert res.returncode == 0, res.stderr
        wait_until(
            lambda: query1(
                dsn,
                "SELECT outcome FROM leasectl_ticks WHERE tick_at = %s AND outcome = 'cancelled'",
                running,
            ),
            timeout=10,
            interval=0.05,
            what="the running tick cancelled",
        )
        assert time.monotonic() - asked < 10  # not the 30 s the tick would have run
        rows = query1(dsn, "SELECT count(*) FROM leasectl_ticks WHERE outcome = 'running'")
        assert rows == 0
    finally:
        kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            kill_group(proc)


def query1(dsn: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(sql, params or None).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None
