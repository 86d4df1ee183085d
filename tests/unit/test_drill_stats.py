"""Leadership intervals, caps and overlaps of a drill (pure, no database)."""

from __future__ import annotations

from leasectl.tools.drill.stats import Cap, LeaseLogEvent, holdings, overlaps, percentile, summarize


def ev(ts: float, replica: str, action: str, epoch: int, lease: str = "L") -> LeaseLogEvent:
    return LeaseLogEvent(ts, replica, f"lease_{action}", lease, epoch, "r")


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    assert summarize([1.0, 2.0])["max"] == 2.0


def test_clean_handover_has_no_overlap() -> None:
    hs = holdings(
        [ev(1, "a", "acquired", 1), ev(5, "a", "released", 1), ev(5.01, "b", "acquired", 2)],
        run_end=10,
    )
    assert [(h.replica, h.start, h.end) for h in hs] == [("a", 1, 5), ("b", 5.01, 10)]
    assert overlaps(hs) == []


def test_overlap_is_found_and_measured() -> None:
    hs = holdings(
        [ev(1, "a", "acquired", 1), ev(6, "a", "lost", 1), ev(5, "b", "acquired", 2)], run_end=10
    )
    (o,) = overlaps(hs)
    assert (o.first.replica, o.second.replica) == ("a", "b")
    assert abs(o.seconds - 1.0) < 1e-9


def test_same_replica_reacquiring_is_not_an_overlap() -> None:
    hs = holdings(
        [ev(1, "a", "acquired", 1), ev(2, "a", "lost", 1), ev(2.5, "a", "acquired", 2)], run_end=3
    )
    assert overlaps(hs) == []


def test_kill_cap_ends_belief_at_the_kill() -> None:
    # A killed process never logs its end; without the cap it would hold until the run ends.
    events = [ev(1, "a", "acquired", 1), ev(4.3, "b", "acquired", 2)]
    assert overlaps(holdings(events, run_end=10))
    hs = holdings(events, [Cap("a", 4.0, 4.0, "SIGKILL")], run_end=10)
    assert overlaps(hs) == []
    assert hs[0].end == 4.0 and "SIGKILL" in hs[0].end_reason


def test_stop_cap_bounds_a_late_lost_line() -> None:
    # SIGSTOP at 3: the zombie logs its loss only after SIGCONT at 12, but its belief ended
    # by 3 + ttl (5) = 8, before the new holder acquired at 10.
    events = [ev(1, "a", "acquired", 1), ev(10, "b", "acquired", 2), ev(12, "a", "lost", 1)]
    assert overlaps(holdings(events, run_end=20))
    hs = holdings(events, [Cap("a", 3.0, 8.0, "SIGSTOP+ttl")], run_end=20)
    assert overlaps(hs) == []


def test_cap_does_not_touch_later_holdings() -> None:
    events = [ev(1, "a", "acquired", 1), ev(2, "a", "lost", 1), ev(9, "a", "acquired", 3)]
    hs = holdings(events, [Cap("a", 1.5, 1.6, "SIGKILL")], run_end=20)
    assert [h.end for h in hs] == [1.6, 20]


def test_process_exit_closes_open_holdings() -> None:
    hs = holdings([ev(1, "a", "acquired", 1)], process_ends={"a": 3.0}, run_end=10)
    assert hs[0].end == 3.0 and hs[0].end_reason == "process_exit"


def test_release_time_from_the_database_tightens_a_lagging_log_line() -> None:
    # The old holder's "released" line was written after the new holder's "acquired" line
    # (CPU contention), but the database says the release statement ran first.
    events = [ev(1, "a", "acquired", 1), ev(5.2, "a", "released", 1), ev(5.1, "b", "acquired", 2)]
    assert overlaps(holdings(events, run_end=10))
    hs = holdings(events, release_times={("L", "a", 1): 5.05}, run_end=10)
    assert overlaps(hs) == []


def test_leases_are_independent() -> None:
    events = [ev(1, "a", "acquired", 1, "x"), ev(2, "b", "acquired", 1, "y")]
    assert overlaps(holdings(events, run_end=10)) == []
