"""Duplicate classification and the per-kind summary (pure)."""

from __future__ import annotations

from leasectl.tools.drill.invariants import classify_duplicates, summarize_rounds
from leasectl.tools.drill.rounds import RoundResult
from leasectl.tools.drill.stats import Holding
from leasectl.tools.webhook_sink import Delivery


def d(key: str, replica: str, epoch: int, at: float) -> Delivery:
    return Delivery(key, epoch, replica, at, True, 200)


HOLDINGS = [
    Holding("notification_send", "a", 1, 0.0, 10.0, "lost: connection_lost (capped: SIGKILL)"),
    Holding("notification_send", "b", 2, 10.3, 30.0, "released: shutdown"),
    Holding("notification_send", "c", 3, 30.1, 40.0, "open"),
]


def test_redelivery_after_a_crash_is_in_the_window() -> None:
    out = classify_duplicates(
        [d("n1", "a", 1, 9.99), d("n1", "b", 2, 10.4)], HOLDINGS, lease_ttl=5, window=1
    )
    assert len(out["allowed"]) == 1 and out["violations"] == []


def test_same_holder_twice_is_not_a_cross_epoch_duplicate() -> None:
    out = classify_duplicates(
        [d("n1", "a", 1, 1), d("n1", "a", 1, 2)], HOLDINGS, lease_ttl=5, window=1
    )
    assert out == {"allowed": [], "violations": []}


def test_duplicate_long_before_the_crash_is_a_violation() -> None:
    out = classify_duplicates(
        [d("n2", "a", 1, 1.0), d("n2", "b", 2, 11.0)], HOLDINGS, lease_ttl=5, window=1
    )
    assert len(out["violations"]) == 1


def test_duplicate_after_a_graceful_release_is_a_violation() -> None:
    out = classify_duplicates(
        [d("n3", "b", 2, 29.9), d("n3", "c", 3, 30.2)], HOLDINGS, lease_ttl=5, window=1
    )
    assert len(out["violations"]) == 1


def test_summary_per_kind() -> None:
    rounds = [
        RoundResult(0, "kill", "L", "a", 1, 0.0, takeover_s=0.3, recovered=True),
        RoundResult(1, "kill", "L", "b", 2, 5.0, takeover_s=0.5, recovered=True),
        RoundResult(2, "graceful", "L", "c", 3, 9.0, takeover_s=0.02, recovered=False),
    ]
    kill, graceful = summarize_rounds(rounds)
    assert kill["kind"] == "kill" and kill["rounds"] == 2 and kill["recovered"] == 2
    assert kill["takeover"]["p99"] == 0.5 and kill["takeover"]["p50"] == 0.3
    assert graceful["recovered"] == 0


def test_zombie_call_after_sigcont_is_in_the_window() -> None:
    # Stopped at 0 (belief capped at 5), SIGCONT at 7: a call already past its check() goes
    # out on waking, before the zombie logs its loss at 7.01.
    zombie = Holding("L", "a", 1, -10.0, 5.0, "lost: ttl_expired (capped: SIGSTOP+ttl)", 7.01)
    successor = Holding("L", "b", 2, 6.5, 20.0, "open")
    out = classify_duplicates(
        [d("n4", "b", 2, 6.6), d("n4", "a", 1, 7.0)], [zombie, successor], lease_ttl=5, window=1
    )
    assert len(out["allowed"]) == 1 and out["violations"] == []


def test_rerun_after_a_lost_lease_is_not_a_second_completion() -> None:
    from leasectl.tools.drill.cluster import LogLine
    from leasectl.tools.drill.invariants import unique_slots

    hs = [
        Holding("crl", "a", 210, 0.0, 5.0, "lost: connection_lost"),
        Holding("crl", "a", 211, 5.2, 30.0, "open"),
        Holding("crl", "b", 1, 40.0, 50.0, "open"),
    ]

    def done(ts: float, replica: str, epoch: int, slot: str) -> LogLine:
        return LogLine(ts, replica, "tick_finished", "crl", epoch, "", "crl", "ok", slot)

    # Epoch 210's tick finished after its lease was lost; 211 re-ran the slot: by design.
    lines = [done(6.0, "a", 211, "s1"), done(6.5, "a", 210, "s1")]
    twice, reruns, n = unique_slots(lines, hs, ["crl"])
    assert (twice, len(reruns), n) == ([], 1, 1)
    # Both completions under a believed lease: a violation.
    lines = [done(4.0, "a", 210, "s2"), done(41.0, "b", 1, "s2")]
    twice, reruns, n = unique_slots(lines, hs, ["crl"])
    assert len(twice) == 1 and reruns == []


def test_a_commit_acknowledged_while_the_crashing_primary_goes_down_is_replications_loss() -> None:
    from leasectl.tools.drill.invariants import replication_losses

    # Crash issued at 100.0, the old primary gone at 100.3; one commit was lost.
    crash = RoundResult(0, "db-failover", "L", "", 1, 100.0, t_down=100.3, lost_commits=1)
    inserted = {"early": 97.5, "before": 99.0, "during": 100.2, "after": 100.5}
    missing = list(inserted)
    assert replication_losses(missing, inserted, [crash], "async") == {"before", "during"}
    assert replication_losses(missing, inserted, [crash], "sync") == set()
    clean = RoundResult(1, "db-failover", "L", "", 1, 100.0, t_down=100.3, lost_commits=0)
    assert replication_losses(missing, inserted, [clean], "async") == set()


def test_a_lagging_standby_widens_the_replication_window_to_its_first_lost_commit() -> None:
    from leasectl.tools.drill.invariants import replication_losses
    from leasectl.tools.drill.standby import parse_commits

    # pg_waldump (TZ=UTC) of the old primary's WAL past the standby's replay end.
    waldump = (
        "rmgr: Heap len (rec/tot): 54/54, tx: 901, lsn: 0/0301A0B8, desc: INSERT off: 3\n"
        "rmgr: Transaction len (rec/tot): 34/34, tx: 901, lsn: 0/0301A0F0, prev 0/0301A0B8, "
        "desc: COMMIT 2026-12-07 19:30:55.250000 UTC\n"
        "rmgr: Transaction len (rec/tot): 34/34, tx: 902, lsn: 0/0301A128, prev 0/0301A0F0, "
        "desc: COMMIT 2026-12-07 19:30:58.500000 UTC\n"
    )
    lost = parse_commits(waldump)
    assert lost.count == 2 and lost.first_at == 1796671855.25
    assert parse_commits("desc: COMMIT\n").first_at is None  # no time: the 2 s default applies
    crash = RoundResult(
        0, "db-failover", "L", "", 1, lost.first_at + 4.0, t_down=lost.first_at + 4.2,
        lost_commits=lost.count, first_lost_at=lost.first_at,
    )  # fmt: skip
    at = lost.first_at
    inserted = {"before-lag": at - 0.1, "lagged": at + 0.5, "late": at + 4.1}
    assert replication_losses(list(inserted), inserted, [crash], "async") == {"lagged", "late"}


def test_a_superseded_epoch_believed_briefly_after_a_terminated_session_is_tolerated() -> None:
    """The published 30-round drill: ``terminate`` ended r0's lock session; r1 took the lease
    with the next epoch 14 ms later, r0 logged the loss 17 ms later: 3.3 ms of two believers,
    the old one of a superseded epoch. docs/safety.md promises only one believer of the
    current epoch there; the same overlap after any other fault, or of one epoch, fails."""
    from leasectl.tools.drill.invariants import split_overlaps
    from leasectl.tools.drill.stats import overlaps

    fault = 100.0
    hs = [
        Holding("crl", "r0", 852, 97.8, fault + 0.017, "lost: connection_lost"),
        Holding("crl", "r1", 853, fault + 0.014, 112.0, "lost: connection_lost"),
    ]
    ovs = overlaps(hs)
    assert len(ovs) == 1 and abs(ovs[0].seconds - 0.003) < 1e-6

    def rnd(kind: str, victim: str = "r0") -> RoundResult:
        return RoundResult(133, kind, "notification_send", victim, 852, t_fault=fault)

    for kind in ("terminate", "db-restart", "db-failover"):
        bad, tolerated = split_overlaps(ovs, [rnd(kind)], lease_ttl=5.0)
        assert (bad, len(tolerated)) == ([], 1), kind
    # Not promised away after a crash, a stop, a partition or a graceful hand-over.
    for kind in ("kill", "stop", "partition", "graceful", "backend-kill-storm", "wedge"):
        bad, tolerated = split_overlaps(ovs, [rnd(kind)], lease_ttl=5.0)
        assert (len(bad), tolerated) == (1, []), kind
    # terminate ended someone else's session: r0's belief is not excused.
    bad, _ = split_overlaps(ovs, [rnd("terminate", victim="r2")], lease_ttl=5.0)
    assert len(bad) == 1
    # No fault at all before the overlap.
    assert len(split_overlaps(ovs, [], lease_ttl=5.0)[0]) == 1
    # Two believers of the same epoch: always a violation.
    same = overlaps([hs[0], Holding("crl", "r1", 852, fault + 0.014, 112.0, "open")])
    assert len(split_overlaps(same, [rnd("terminate")], lease_ttl=5.0)[0]) == 1
    # The old belief outlasting lease_ttl after the fault: beyond the documented bound.
    late = overlaps([Holding("crl", "r0", 852, 97.8, fault + 6.0, "open"), hs[1]])
    assert len(split_overlaps(late, [rnd("terminate")], lease_ttl=5.0)[0]) == 1
    # A holding that began after the fault was not the one whose session was ended.
    after = overlaps([Holding("crl", "r0", 852, fault + 0.5, fault + 2.0, "open"), hs[1]])
    assert len(split_overlaps(after, [rnd("terminate")], lease_ttl=5.0)[0]) == 1
