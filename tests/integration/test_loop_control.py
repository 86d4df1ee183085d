"""leasectl.control against a real database: the App's pause/resume/trigger, the audit trail,
the unknown-name error, and LoopControl's view of the rows (poll, --all, resume_at)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from leasectl import App
from leasectl.loop_control import ALL, LoopControl, UnknownLoop


def _replica(conn: psycopg.Connection[Any], loops: list[str]) -> None:
    conn.execute(
        "INSERT INTO leasectl_replicas (id, host, pid, version, loops) "
        "VALUES ('r1', 'h', 1, '0', %s)",
        (loops,),
    )


def test_app_controls_loops_without_running(dsn: str, conn: psycopg.Connection[Any]) -> None:
    app = App(dsn=dsn)
    with pytest.raises(UnknownLoop) as info:
        app.pause("mailer")
    assert info.value.known == []
    assert "no replica has registered yet" in str(info.value)

    _replica(conn, ["mailer", "crl"])
    with pytest.raises(UnknownLoop) as info:
        app.pause("mailr")
    assert info.value.known == ["crl", "mailer"]

    app.pause("mailer", reason="bounce storm", by="ops")
    row = conn.execute("SELECT paused_by, reason FROM leasectl_loop_pauses").fetchone()
    assert row == ("ops", "bounce storm")
    tid = app.trigger("crl", reason="now")
    assert app.resume("mailer") is True
    assert app.resume("mailer") is False
    events = conn.execute(
        "SELECT lease, event, reason FROM leasectl_lease_events ORDER BY id"
    ).fetchall()
    assert events == [
        ("mailer", "loop_paused", "bounce storm"),
        ("crl", "loop_triggered", "now"),
        ("mailer", "loop_resumed", ""),
    ]
    assert conn.execute(
        "SELECT loop FROM leasectl_loop_triggers WHERE id = %s", (tid,)
    ).fetchone() == ("crl",)


def test_loop_control_view(dsn: str, conn: psycopg.Connection[Any]) -> None:
    _replica(conn, ["a", "b", "e"])
    app = App(dsn=dsn)
    old = app.trigger("e")  # asked before this replica started: not its to run
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        control = LoopControl(pool, leased=["a", "b"], everywhere=["e"], poll_interval=60)
        changes: list[tuple[set[str], set[str]]] = []
        control.add_listener(lambda changed, now: changes.append((changed, now)))
        control.start()
        try:
            assert control.loaded.is_set() and control.paused("a") is None
            assert control.pending_trigger("e") is None, old

            app.pause("a", reason="x", now=True)
            control.poke()
            assert _wait(lambda: control.paused("a") is not None)
            assert changes[-1] == ({"a"}, {"a"})
            assert control.paused("b") is None

            app.pause(ALL, reason="freeze")
            control.poke()
            assert _wait(lambda: control.paused("b") is not None)
            assert control.paused("b").reason == "freeze"  # type: ignore[union-attr]
            app.resume(ALL, at=datetime.now(UTC) + timedelta(seconds=1))
            control.poke()  # the NOTIFY a lock session would relay
            assert _wait(lambda: control.paused("b").resume_at is not None)  # type: ignore[union-attr]
            # The view re-reads by itself when resume_at passes (poll_interval is 60 s).
            assert _wait(lambda: control.paused("b") is None, timeout=10)
            assert control.paused("a") is not None  # its own pause stays

            t_a, t_e = app.trigger("a"), app.trigger("e")
            control.poke()
            assert _wait(lambda: control.pending_trigger("e") is not None)
            pending_e = control.pending_trigger("e")
            pending_a = control.pending_trigger("a")
            assert pending_e is not None and pending_e.id == t_e
            assert pending_a is not None and pending_a.id == t_a
            control.done(pending_e)
            assert control.refresh()  # a poll after it ran does not offer it again
            assert control.pending_trigger("e") is None
            assert control.pending_trigger("a") is not None  # nobody claimed it yet
        finally:
            control.stop()


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
