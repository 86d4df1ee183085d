"""Run history as an operator sees it: ``leasectl status`` (+ ``--loop``), and ledger retention."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from leasectl.ledger import retention_loop
from leasectl.loop import TickContext
from tests.conftest import REPO, wait_until

UTC = dt.UTC


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(
        LEASECTL_DSN=dsn,
        LEASECTL_METRICS__LISTEN="",
        LEASECTL_APP="tests.apps.history:app",
        PYTHONPATH=str(REPO),
    )
    return env


def _status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leasectl.cli", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def _loops(env: dict[str, str]) -> dict[str, Any]:
    out = _status(env, "--json")
    if out.returncode not in (0, 1):
        return {}
    return {loop["loop"]: loop for loop in json.loads(out.stdout)["loops"]}


@pytest.mark.slow
def test_status_shows_last_runs_next_fire_and_history(
    dsn: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    env = _env(dsn)
    leader = subprocess.Popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--replica-id", "lead"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(leader)
    web = subprocess.Popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--replica-id", "web", "--no-leased"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(web)

    def ready() -> dict[str, Any] | None:
        loops = _loops(env)
        beat, flaky = loops.get("beat"), loops.get("flaky")
        if not beat or not flaky or len([r for r in flaky["runs"] if r["live"]]) < 2:
            return None
        return loops

    loops = wait_until(ready, timeout=90, interval=0.5, what="both loops in status --json")
    beat, flaky = loops["beat"], loops["flaky"]
    assert beat["placement"] == "leased" and beat["schedule"] == "cron '* * * * * *' Europe/Berlin"
    assert beat["last"]["replica"] == "lead" and beat["last"]["outcome"] == "ok"
    # The next fire is given in the loop's zone (Berlin: +01:00 or +02:00), after the last run.
    next_fire = dt.datetime.fromisoformat(beat["next_fire_at"])
    assert next_fire.utcoffset() in (dt.timedelta(hours=1), dt.timedelta(hours=2))
    assert next_fire > dt.datetime.fromisoformat(beat["last"]["tick_at"])
    # Everywhere loops report per replica, each with its own last error.
    assert {r["replica"] for r in flaky["runs"] if r["live"]} == {"lead", "web"}
    for run in flaky["runs"]:
        assert run["outcome"] == "failed"
        assert run["last_error"] == f"RuntimeError: flaky on {run['replica']}: disk full"
    assert flaky["wedged_on"] == []

    text = _status(env)
    assert "loops (last run, next fire)" in text.stdout and "disk full" in text.stdout

    wait_until(
        lambda: len(json.loads(_status(env, "--loop", "beat", "--json").stdout)["recent"]) >= 3,
        timeout=30,
        what="three slots in beat's history",
    )
    one = json.loads(_status(env, "--loop", "beat", "--json", "--history", "3").stdout)
    recent = one["recent"]
    assert len(recent) == 3
    slots = [dt.datetime.fromisoformat(r["tick_at"]) for r in recent]
    assert slots == sorted(slots, reverse=True) and len(set(slots)) == 3
    assert all(s.microsecond == 0 for s in slots)  # cron slots are the fire instants
    assert {r["replica"] for r in recent} == {"lead"}
    missing = _status(env, "--loop", "nope")
    assert missing.returncode == 1 and "no run recorded" in missing.stderr
    for p in (leader, web):
        p.terminate()
    for p in (leader, web):
        assert p.wait(60) == 0


def test_ledger_retention_keeps_each_loops_latest_done_slot(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    now = dt.datetime.now(UTC)
    day = dt.timedelta(days=1)
    rows = [
        # a busy loop: 10 days of daily rows, all ok; only the last 3 days stay
        *[("busy", now - i * day, "ok") for i in range(10)],
        # a monthly loop whose only done slot is 40 days old: kept (it says what is done)
        ("monthly", now - 40 * day, "ok"),
        ("monthly", now - 45 * day, "failed"),
        # a slot still running (a holder died mid-tick): never deleted by age
        ("busy", now - 20 * day, "running"),
    ]
    for loop, at, outcome in rows:
        finished = None if outcome == "running" else at
        conn.execute(
            "INSERT INTO leasectl_ticks (loop, tick_at, epoch, replica, started_at, "
            "finished_at, outcome) VALUES (%s, %s, 1, 'r', %s, %s, %s)",
            (loop, at, at, finished, outcome),
        )
    conn.execute(
        "INSERT INTO leasectl_loop_runs (loop, replica, placement, schedule, tz, updated_at) "
        "VALUES ('gone', 'old-replica', 'everywhere', 'every 1s', 'UTC', now() - interval '9 days')"
    )
    spec = retention_loop(3 * 86400 - 60)
    assert spec.placement == "everywhere" and spec.interval == 600.0
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        ctx = TickContext(
            loop=spec.name,
            replica_id="r",
            pool=pool,
            config=None,
            tick_at=now,
            deadline=time.monotonic() + 60,
        )
        spec.run(ctx)
    left = conn.execute(
        "SELECT loop, outcome, count(*) FROM leasectl_ticks GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert left == [("busy", "ok", 3), ("busy", "running", 1), ("monthly", "ok", 1)]
    assert ctx.stats == {"deleted": 8, "runs_deleted": 1}
