"""Pure parts of leasectl.status: classifying a lease row, JSON shape, the unheld rule."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from leasectl.status import ClusterStatus, LeaseStatus, ReplicaStatus, classify


def replica(rid: str, *, alive: bool = True, loops: tuple[str, ...] = ("digest",)) -> ReplicaStatus:
    return ReplicaStatus(
        id=rid, host=f"{rid}.host", pid=100, version="0.1.0",
        started_at=datetime(2026, 1, 1, tzinfo=UTC), last_seen_age_s=0.5, alive=alive,
        connected=alive, stopped=False, may_lead=True, loops=loops,
    )  # fmt: skip


REPLICAS = [replica("a"), replica("b"), replica("c", alive=False)]


def row(**kw: object) -> tuple[object, ...]:
    base: dict[str, object] = dict(
        name="digest", lock_pid=42, app="leasectl/a", addr="10.0.0.1", holder="a", epoch=3,
        row_pid=42, held_for=100.0, renewed_age=0.4, idle=None,
    )  # fmt: skip
    base.update(kw)
    return tuple(base.values())


def test_held() -> None:
    le = classify(row(), 5.0, REPLICAS, expected=True)
    assert (le.state, le.holder, le.host, le.epoch, le.backend_pid) == (
        "held",
        "a",
        "a.host",
        3,
        42,
    )
    assert le.waiting == ("b",)  # c is not alive
    assert le.ok and le.unheld_for_s == 0.0


def test_stale_when_holder_stops_renewing() -> None:
    le = classify(row(renewed_age=9.0), 5.0, REPLICAS, expected=True)
    assert le.state == "stale" and le.unheld_for_s == 4.0
    assert "has not renewed for 9.0s" in le.reason


def test_stale_when_row_names_another_backend() -> None:
    le = classify(row(row_pid=7, holder="b", app="leasectl/c"), 5.0, REPLICAS, expected=True)
    assert le.state == "stale" and le.holder == "c" and le.held_for_s is None
    assert "names backend 7" in le.reason


def test_free_and_never_acquired() -> None:
    free = classify(row(lock_pid=None, app=None, idle=12.0), 5.0, REPLICAS, expected=True)
    assert (free.state, free.holder, free.epoch, free.unheld_for_s) == ("free", None, 3, 12.0)
    assert free.waiting == ("a", "b")
    never = classify(
        row(lock_pid=None, app=None, epoch=None, holder=None, row_pid=None, held_for=None,
            renewed_age=None), 5.0, REPLICAS, expected=True,
    )  # fmt: skip
    assert never.reason == "never acquired" and never.unheld_for_s == math.inf


def test_unheld_respects_max_and_expected() -> None:
    status = ClusterStatus(
        leases=[
            LeaseStatus("a", "held"),
            LeaseStatus("b", "free", unheld_for_s=10.0),
            LeaseStatus("c", "stale", unheld_for_s=100.0),
            LeaseStatus("d", "free", unheld_for_s=math.inf, expected=False),
        ],
        replicas=[],
    )
    assert [le.name for le in status.unheld()] == ["b", "c"]
    assert [le.name for le in status.unheld(30)] == ["c"]
    data = status.to_json()
    assert data["leases"][3]["unheld_for_s"] is None  # inf is not JSON
    assert set(data) == {
        "leases", "replicas", "loops", "pauses", "events", "rate_limits", "database", "taken_at",
    }  # fmt: skip
