"""The liveness invariant's pure logic: classifying leased slots and a round's windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leasectl.tools.drill.invariants import REPLICATION_WINDOW_S
from leasectl.tools.drill.liveness import (
    WINDOW_CAP_MIN_S,
    LedgerRow,
    LoopPolicy,
    Window,
    classify_slots,
    fault_windows,
)
from leasectl.tools.drill.rounds import RoundResult
from leasectl.tools.drill.stats import Holding

T0 = 1_800_000_000.0  # a slot boundary for every interval used here
SEND = LoopPolicy("send", 1.0, "coalesce")


def ok(slot: int, loop: str = "send", took: float = 0.1, step: float = 1.0) -> LedgerRow:
    t = T0 + slot * step
    return LedgerRow(loop, t, "ok", t + 0.01, t + 0.01 + took, "r1", 1)


def test_every_slot_done_is_live() -> None:
    lv = classify_slots(SEND, [ok(i) for i in range(10)])
    assert lv.ok and lv.slots == 10 and lv.done == 10 and not lv.undone


def test_no_rows_no_slots() -> None:
    lv = classify_slots(SEND, [ok(0, loop="other")])
    assert lv.ok and lv.slots == 0


def test_a_gap_nobody_explains_is_undone() -> None:
    rows = [ok(i) for i in range(10) if i not in (4, 5)]
    lv = classify_slots(SEND, rows)
    assert not lv.ok
    assert lv.undone == [T0 + 4, T0 + 5]
    assert lv.slots == 10 and lv.done == 8


def test_slots_inside_a_takeover_window_are_tolerated_and_named() -> None:
    rows = [ok(i) for i in range(10) if i not in (4, 5)]
    window = Window("send", T0 + 4.3, T0 + 5.8, "#3 kill")
    lv = classify_slots(SEND, rows, [window])
    assert lv.ok
    assert lv.in_window == 2 and lv.windows == {"#3 kill": 2}
    assert "#3 kill: 2" in lv.describe()


def test_a_window_of_another_lease_excuses_nothing() -> None:
    rows = [ok(i) for i in range(10) if i != 4]
    lv = classify_slots(SEND, rows, [Window("other", T0, T0 + 9, "#0 kill")])
    assert lv.undone == [T0 + 4]


def test_a_slot_that_begins_after_the_window_must_be_done() -> None:
    rows = [ok(i) for i in range(10) if i not in (4, 6)]
    lv = classify_slots(SEND, rows, [Window("send", T0 + 3.5, T0 + 4.5, "#1 stop")])
    assert lv.in_window == 1 and lv.undone == [T0 + 6]


def test_a_slot_passed_during_a_long_tick_is_the_misfire_policys() -> None:
    # slot 3's tick runs 2.5 s: slot 4 begins (and ends) while it runs; coalesce folds it in
    rows = [ok(i) for i in range(10) if i != 4]
    rows[3] = ok(3, took=2.5)
    for misfire in ("coalesce", "skip"):
        lv = classify_slots(LoopPolicy("send", 1.0, misfire), rows)
        assert lv.ok and lv.misfired == 1, misfire
        assert f"1 {misfire}d by the misfire policy" in lv.describe()


def test_failed_slots_ran_and_the_backoff_after_them_is_tolerated() -> None:
    t = T0 + 3
    failed = LedgerRow("send", t, "failed", t + 0.01, t + 0.05, "r1", 1)
    rows = [ok(i) for i in range(10) if i not in (3, 4, 5)] + [failed]
    lv = classify_slots(SEND, rows, backoff_max=1.5)
    assert lv.failed == 1 and lv.backoff == 2 and lv.ok
    # past the scheduler's longest backoff the gap is a violation again
    lv = classify_slots(SEND, rows, backoff_max=0.0)
    assert lv.backoff == 1 and lv.undone == [T0 + 5]


def test_an_interrupted_slot_outside_any_window_is_undone() -> None:
    t = T0 + 4
    lost = LedgerRow("send", t, "lost", t + 0.01, t + 0.02, "r1", 1)
    rows = [ok(i) for i in range(10) if i != 4] + [lost]
    assert classify_slots(SEND, rows).undone == [T0 + 4]


def test_slots_of_a_slower_loop_are_its_interval_apart() -> None:
    crl = LoopPolicy("crl", 2.0, "coalesce")
    rows = [ok(i, loop="crl", step=2.0) for i in range(5) if i != 2]
    lv = classify_slots(crl, rows)
    assert lv.slots == 5 and lv.undone == [T0 + 4.0]


def _round(kind: str, victim: str = "r1", **kw: float | int | None) -> RoundResult:
    r = RoundResult(0, kind, "send", victim, 1, T0 + 4.2)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


POLICIES = {"send": SEND, "crl": LoopPolicy("crl", 2.0, "coalesce")}


def test_a_kill_window_runs_from_the_fault_to_the_loops_first_tick_after_takeover() -> None:
    holdings = [
        Holding("send", "r1", 1, T0, T0 + 4.2, "process_exit"),
        Holding("send", "r2", 2, T0 + 4.6, T0 + 20, "open"),
        Holding("crl", "r2", 1, T0, T0 + 20, "open"),  # not the victim's: not affected
    ]
    first_after = LedgerRow("send", T0 + 4, "ok", T0 + 4.65, T0 + 4.7, "r2", 2)
    ws = fault_windows([_round("kill", takeover_s=0.4)], holdings, POLICIES, [first_after], T0 + 30)
    assert ws == [Window("send", T0 + 4.2, T0 + 4.7, "#0 kill")]


def test_a_window_without_a_tick_afterwards_is_capped() -> None:
    holdings = [
        Holding("send", "r1", 1, T0, T0 + 4.2, "process_exit"),
        Holding("send", "r2", 2, T0 + 4.6, T0 + 60, "open"),
    ]
    (w,) = fault_windows([_round("kill", takeover_s=0.4)], holdings, POLICIES, [], T0 + 60)
    assert w.end == pytest.approx(T0 + 4.6 + WINDOW_CAP_MIN_S)


def test_server_wide_faults_affect_every_lease_and_wedge_only_its_loop() -> None:
    holdings = [Holding("crl", "r2", 1, T0, T0 + 20, "open")]
    ws = fault_windows([_round("db-restart", t_accept=T0 + 5.0)], holdings, POLICIES, [], T0 + 30)
    assert {w.lease for w in ws} == {"send", "crl"}
    ws = fault_windows([_round("wedge", takeover_s=5.1)], holdings, POLICIES, [], T0 + 30)
    assert [w.lease for w in ws] == ["send"]


def test_a_join_tolerates_only_its_hand_over_gaps() -> None:
    holdings = [
        Holding("send", "r1", 1, T0, T0 + 8.0, "released: rebalance: to r4"),
        Holding("send", "r4", 2, T0 + 8.01, T0 + 12.0, "released: shutdown"),
        Holding("send", "r1", 3, T0 + 12.02, T0 + 30, "open"),
    ]
    r = _round("join", victim="r4", t_lift=T0 + 11.9, rebalance_back_s=0.2)
    ws = fault_windows([r], holdings, POLICIES, [], T0 + 30)
    assert ws == [
        Window("send", T0 + 8.0, T0 + 8.01, "#0 join hand-over"),
        Window("send", T0 + 12.0, T0 + 12.02, "#0 join hand-over"),
    ]


def test_a_lossy_async_failover_also_tolerates_the_slots_just_before_the_crash() -> None:
    lossy = _round("db-failover", t_accept=T0 + 6.0, lost_commits=3)
    (w,) = fault_windows([lossy], [], {"send": SEND}, [], T0 + 30)
    assert w.start == pytest.approx(T0 + 4.2 - REPLICATION_WINDOW_S)
    (w,) = fault_windows(
        [_round("db-failover", t_accept=T0 + 6.0)], [], {"send": SEND}, [], T0 + 30
    )
    assert w.start == T0 + 4.2


def test_a_slot_whose_claim_failed_is_in_error_backoff_not_undone() -> None:
    """The published 30-round drill's drill_wedge slot 20:04:40: slot 38's finish died with its
    work backend (row left 'running'), 39 ran, 40 has no row, 41 ran 1 s late. A failed claim
    leaves no row; the holder's tick_claim_failed line names the slot and stands in for it."""
    from leasectl.tools.drill.cluster import LogLine
    from leasectl.tools.drill.liveness import claim_failures

    wedge = LoopPolicy("wedge", 1.0, "coalesce")
    rows = [ok(i, loop="wedge") for i in range(10) if i not in (4, 5)]
    assert classify_slots(wedge, rows).undone == [T0 + 4, T0 + 5]
    slot = datetime.fromtimestamp(T0 + 4, UTC).isoformat()
    lines = [
        LogLine(T0 + 3.8, "r1", "tick_claim_failed", None, None, "", "wedge", None, slot),
        # Another loop's failed claim, or one naming no slot, excuses nothing here.
        LogLine(T0 + 3.8, "r1", "tick_claim_failed", None, None, "", "send", None, slot),
        LogLine(T0 + 3.8, "r1", "tick_claim_failed", None, None, "", "wedge", None, None),
    ]
    failed = claim_failures(lines, ["wedge"])
    assert [(r.loop, r.tick_at, r.outcome) for r in failed] == [("wedge", T0 + 4, "claim_failed")]
    lv = classify_slots(wedge, rows, claim_failures=failed)
    assert lv.ok and lv.backoff == 2 and lv.done == 8  # slot 4 attempted, 5 in its backoff
    # A failed claim of a slot that later ran counts as the run, not as backoff.
    lv = classify_slots(wedge, [ok(i, loop="wedge") for i in range(10)], claim_failures=failed)
    assert lv.ok and lv.backoff == 0 and lv.done == 10
    # Without the log line the same gap is still a violation.
    assert classify_slots(wedge, rows, claim_failures=[]).undone == [T0 + 4, T0 + 5]
