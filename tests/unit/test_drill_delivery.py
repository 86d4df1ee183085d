"""The drill's notification judging: what the loops will still deliver, by when (pure)."""

from __future__ import annotations

import pytest

from leasectl.certs.settings import NotificationSettings
from leasectl.tools.drill.delivery import (
    Bounds,
    DrainWatch,
    NoteState,
    delays_by_kind,
    fate,
    first_deliveries,
)
from leasectl.tools.drill.invariants import judge_notifications
from leasectl.tools.webhook_sink import Delivery

# The drill's replicas: send every 1 s (tick timeout 60 s), retry every 2 s (120 s).
B = Bounds(
    send_every=1.0,
    send_timeout=60.0,
    retry_every=2.0,
    retry_timeout=120.0,
    foreign_after=300.0,
    max_attempts=5,
)


def test_bounds_follow_the_loops_settings() -> None:
    b = Bounds.from_settings(NotificationSettings(stale_claim_after=30.0))
    # Defaults: send 60 s / retry 120 s intervals; stale_claim_after is raised to the longer
    # tick timeout (120 s), as the loops do.
    assert (b.send_every, b.send_timeout, b.retry_every, b.retry_timeout) == (60, 60, 120, 120)
    assert b.foreign_after == 120.0 and b.max_attempts == 5
    assert b.cap() == 120.0 + 6 * (60 + 60 + 120 + 120)


@pytest.mark.parametrize(
    ("state", "kind", "within"),
    [
        (NoteState("n", "sent"), "final", 0.0),
        (NoteState("n", "dead", has_error=True), "final", 0.0),
        (NoteState("n", "pending"), "due", 61.0),
        # issue 23: left 'sending' by an earlier tick of the current epoch - the next tick of
        # the lease that claimed it takes it, not stale_claim_after later.
        (NoteState("n", "sending", claimed_lease="notification_send", claimed_age=5), "due", 61.0),
        (
            NoteState("n", "sending", claimed_lease="notification_retry", claimed_age=5),
            "due",
            122.0,
        ),
        # another lease's claim: taken stale_claim_after after the claim, then one tick
        (NoteState("n", "sending", claimed_lease="other", claimed_age=100), "due", 261.0),
        (NoteState("n", "failed", retry_count=2, retry_in=30.0), "due", 152.0),
        (NoteState("n", "failed", retry_count=2, retry_in=-4.0), "due", 122.0),
    ],
)
def test_rows_the_loops_will_still_deliver_are_due_within_their_bound(
    state: NoteState, kind: str, within: float
) -> None:
    f = fate(state, B)
    assert (f.kind, f.within) == (kind, within)


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (NoteState("n", "dead"), "dead without a reason"),
        (NoteState("n", "failed", retry_count=5, retry_in=0.0), "no attempt left"),
        (NoteState("n", "bogus"), "which no loop takes"),
    ],
)
def test_rows_no_loop_will_ever_deliver_are_never(state: NoteState, why: str) -> None:
    f = fate(state, B)
    assert f.kind == "never" and why in f.why


def test_drain_waits_for_each_row_until_its_bound_and_no_longer() -> None:
    w = DrainWatch(B)
    orphan = NoteState("n1", "sending", claimed_lease="notification_send", claimed_age=0.5)
    hopeless = NoteState("n2", "failed", retry_count=5)
    assert w.update([orphan, hopeless], now=100.0) == 61.0
    assert w.never == {"n2": "failed with no attempt left (5)"}
    # Still the same state 30 s later: the deadline does not move.
    assert w.update([orphan, hopeless], now=130.0) == 31.0
    assert w.still_due(130.0) == ["n1"] and w.overdue(130.0) == []
    # Past its bound: nothing more worth waiting for; the row is overdue (lost if still open).
    assert w.update([orphan, hopeless], now=161.0) is None
    assert w.overdue(161.0) == ["n1"] and w.still_due(161.0) == []


def test_progress_on_a_row_gives_it_a_new_deadline_and_a_final_row_leaves() -> None:
    w = DrainWatch(B)
    assert w.update([NoteState("n1", "pending")], now=0.0) == 61.0
    # Claimed and failed: a retry is due in 1.2 s, then the retry loop's bound.
    failed = NoteState("n1", "failed", retry_count=1, retry_in=1.2)
    assert w.update([failed], now=50.0) == pytest.approx(123.2)
    assert w.update([], now=51.0) is None  # sent: no longer open
    assert w.overdue(1000.0) == [] and w.still_due(51.0) == []


def note_row(nid: str, status: str, error: str | None = None) -> tuple[object, ...]:
    return (nid, status, error, 0, 1, "r", "notification_send")


def test_lost_is_only_what_can_no_longer_be_delivered() -> None:
    rows = [
        note_row("ok", "sent"),
        note_row("never-received", "sent"),
        note_row("dead-reason", "dead", "HTTP 410"),
        note_row("dead-silent", "dead"),
        note_row("overdue", "sending"),
        note_row("due", "pending"),
    ]
    v = judge_notifications(rows, {"ok"}, ["gone"], still_due={"due"})
    assert v.delivered == 1
    assert sorted(v.lost) == ["dead-silent", "gone", "never-received", "overdue"]
    assert v.still_due == ["due"]
    assert v.why == (
        "1 marked sent, never received, 1 dead without a reason, "
        "1 sending past its delivery bound, 1 missing from the database"
    )
    clean = judge_notifications([note_row("ok", "sent"), note_row("d", "dead", "x")], {"ok"}, [])
    assert (clean.delivered, clean.lost, clean.why) == (1, [], "")


def test_delay_per_fault_kind_counts_against_the_last_fault_before_delivery() -> None:
    deliveries = [
        Delivery("a", 1, "r1", 2.0, True, 200),
        Delivery("b", 1, "r1", 12.0, True, 200),
        Delivery("b", 2, "r2", 11.5, True, 200),  # the first accepted copy counts
        Delivery("c", 2, "r2", 25.0, False, 200),  # unsigned: not a delivery
        Delivery("c", 2, "r2", 26.0, True, 500),  # refused: not a delivery
        Delivery("c", 3, "r3", 31.0, True, 200),
        Delivery("d", 3, "r3", 33.0, True, 200),
    ]
    first = first_deliveries(deliveries)
    assert first == {"a": 2.0, "b": 11.5, "c": 31.0, "d": 33.0}
    inserted = {"a": 1.0, "b": 9.0, "c": 20.0, "d": 32.5}
    faults = [(30.0, "backend-kill-storm"), (10.0, "kill")]
    out = delays_by_kind(inserted, first, faults)
    assert set(out) == {"none", "kill", "backend-kill-storm"}
    assert out["none"]["max"] == 1.0 and out["kill"]["max"] == 2.5
    storm = out["backend-kill-storm"]
    assert storm["max"] == 11.0 and storm["slowest"] == "c" and storm["n"] == 2


def test_delay_of_a_row_inserted_while_the_cluster_started_counts_from_cluster_up() -> None:
    out = delays_by_kind(
        {"early": 0.0, "late": 12.0}, {"early": 11.0, "late": 12.5}, [], since=10.0
    )
    assert out["none"]["max"] == 1.0 and out["none"]["slowest"] == "early"
