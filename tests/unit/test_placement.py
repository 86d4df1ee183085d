"""Placement as pure functions: rendezvous hashing with bounded load, preferences, labels."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from leasectl.loop import LoopSpec, TickContext
from leasectl.placement import (
    LeasePolicy,
    Placement,
    Replica,
    choose,
    declared,
    merge_policy,
    ranking,
    runnable,
    score,
    self_view,
)
from leasectl.settings import LoopPlacement

LEASES = [f"loop-{i}" for i in range(6)]


def live(*ids: str, leases: list[str] = LEASES, live_for: float = 60.0) -> list[Replica]:
    return [Replica(i, frozenset(leases), live_for=live_for) for i in ids]


def loads(assignment: dict[str, str], ids: list[str]) -> list[int]:
    return [list(assignment.values()).count(i) for i in ids]


def test_the_score_is_a_stable_function_of_lease_and_replica() -> None:
    assert score("digest", "a") == score("digest", "a")
    assert score("digest", "a") != score("digest", "b")
    assert score("digest", "a") != score("a", "digest")
    # Pinned: sha256 is the same in every process and Python version (never hash()).
    assert score("digest", "a") == int.from_bytes(
        __import__("hashlib").sha256(b"digest\x00a").digest()[:8], "big"
    )


def test_three_replicas_six_leases_hold_two_each() -> None:
    plan = Placement(live("a", "b", "c"))
    assert sorted(plan.assignment) == LEASES
    assert loads(plan.assignment, ["a", "b", "c"]) == [2, 2, 2]


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(
        st.text("abcdefghij0123456789-", min_size=1, max_size=12),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    m=st.integers(min_value=0, max_value=40),
)
def test_no_replica_is_assigned_more_than_its_share(ids: list[str], m: int) -> None:
    leases = [f"lease-{i}" for i in range(m)]
    plan = Placement(live(*ids, leases=leases))
    assert sorted(plan.assignment) == sorted(leases)
    share = math.ceil(m / len(ids)) if m else 0
    assert max(loads(plan.assignment, ids), default=0) <= share
    # Everyone computes the same answer whatever order the rows came in.
    assert Placement(list(reversed(live(*ids, leases=leases)))).assignment == plan.assignment


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10**6))
def test_a_replica_leaving_moves_its_own_leases_and_few_others(seed: int) -> None:
    ids = [f"r{seed}-{i}" for i in range(3)]
    before = Placement(live(*ids)).assignment
    after = Placement(live(*ids[:2])).assignment
    gone = ids[2]
    assert all(after[n] != gone for n in LEASES)
    # HRW keeps the survivors' leases where they were, except what the load bound pushes.
    others_moved = [n for n in LEASES if before[n] != gone and after[n] != before[n]]
    assert len(others_moved) <= 1
    # ... and it is the same plan when the replica comes back: back to 2/2/2, same holders.
    assert Placement(live(*ids)).assignment == before


def test_rank_orders_the_assigned_replica_first_then_hrw() -> None:
    view = live("a", "b", "c")
    plan = Placement(view)
    for lease in LEASES:
        ranked = [r.id for r in plan.ranking(lease)]
        assert ranked[0] == plan.choose(lease)
        assert sorted(ranked) == ["a", "b", "c"]
        assert [plan.rank(lease, r) for r in ranked] == [0, 1, 2]
        assert plan.try_delay(lease, ranked[2], 0.4) == 0.8
    assert plan.rank("unknown", "a") is None


def test_a_replica_not_in_the_view_waits_behind_every_candidate() -> None:
    plan = Placement(live("a", "b"))
    assert plan.try_delay(LEASES[0], "newcomer", 0.5) == 1.0


def test_only_candidates_rank_wedged_and_non_campaigning_replicas_do_not() -> None:
    view = [
        Replica("a", frozenset(LEASES), live_for=9),
        Replica("b", frozenset(LEASES), wedged=frozenset({"loop-0"}), live_for=9),
        Replica("c", frozenset(LEASES[1:]), live_for=9),
    ]
    assert [r.id for r in ranking("loop-0", view)] == ["a"]
    assert choose(["loop-0", "nobody-wants-it"], view) == {"loop-0": "a", "nobody-wants-it": None}


def test_a_preferred_replica_gets_its_lease_whatever_the_load() -> None:
    view = live("a", "b", "c")
    view[1] = replace(view[1], preferred_for=frozenset(LEASES))  # b is preferred for all six
    plan = Placement(view)
    assert set(plan.assignment.values()) == {"b"}
    assert [r.id for r in plan.ranking("loop-3")][0] == "b"


def test_the_holder_hands_over_only_to_the_choice_once_it_has_settled() -> None:
    view = live("a", "b", "c", live_for=60.0)
    plan = Placement(view)
    lease = LEASES[0]
    chosen = plan.choose(lease)
    assert chosen is not None
    other = next(i for i in ("a", "b", "c") if i != chosen)
    assert plan.rebalance_target(lease, chosen, settle=3.0) is None  # already right
    assert plan.rebalance_target(lease, other, settle=3.0) == chosen
    young = [replace(r, live_for=1.0) if r.id == chosen else r for r in view]
    # The better replica is still settling: keep the lease rather than move it twice.
    assert Placement(young).rebalance_target(lease, other, settle=3.0) is None


def test_self_view_uses_what_the_replica_knows_about_itself() -> None:
    rows = [Replica("a", frozenset({"x"}), live_for=7.0), Replica("b", frozenset({"x"}))]
    view = {r.id: r for r in self_view("a", [], ["x"], rows)}
    assert view["a"].campaigns_for == frozenset() and view["a"].live_for == 7.0
    assert view["a"].preferred_for == frozenset({"x"})
    mine = {r.id: r for r in self_view("c", ["x"], [], rows, live_for=0.0)}
    assert set(mine) == {"a", "b", "c"} and mine["c"].campaigns_for == {"x"}


def test_policies_labels_and_preferred_holder() -> None:
    policy = LeasePolicy(preferred_holder="zone-a", requires_labels=("hsm", "smtp"))
    assert policy.allows(["smtp", "hsm", "x"]) and not policy.allows(["hsm"])
    assert policy.prefers("r1", ["zone-a"]) and not policy.prefers("r1", ["zone-b"])
    assert LeasePolicy(preferred_holder="r1").prefers("r1", [])
    assert not LeasePolicy().prefers("r1", ["r1"])
    # The configuration overrides the loop's declaration field by field.
    assert merge_policy("a", ("x",), None, None) == LeasePolicy("a", ("x",))
    assert merge_policy("a", ("x",), "b", None) == LeasePolicy("b", ("x",))
    assert merge_policy("a", ("x",), None, ()) == LeasePolicy("a", ())


def _noop(ctx: TickContext) -> None:
    return None


def test_loops_a_replica_may_not_lead_are_not_run_there() -> None:
    specs = [
        LoopSpec("digest", 60, "leased", _noop, requires_labels=("smtp",)),
        LoopSpec("crl", 60, "leased", _noop, preferred_holder="zone-a"),
        LoopSpec("sweep", 60, "everywhere", _noop, requires_labels=("ignored",)),
    ]
    kept, dropped = runnable(specs, ["zone-a"], {})
    assert [s.name for s in kept] == ["crl", "sweep"] and dropped == {"digest": ("smtp",)}
    kept, dropped = runnable(specs, [], {"digest": LoopPlacement(requires_labels=())})
    assert [s.name for s in kept] == ["digest", "crl", "sweep"] and dropped == {}
    assert declared(specs) == {
        "digest": LeasePolicy(None, ("smtp",)),
        "crl": LeasePolicy("zone-a", ()),
    }


def test_status_shows_the_choice_and_flags_a_lease_away_from_its_preferred_holder() -> None:
    from datetime import UTC, datetime

    from leasectl.status import LeaseStatus, ReplicaStatus, placed

    def replica(rid: str, preferred: tuple[str, ...] = (), alive: bool = True) -> ReplicaStatus:
        return ReplicaStatus(
            rid,
            "h",
            1,
            "v",
            datetime.now(UTC),
            0.1,
            alive,
            alive,
            False,
            True,
            campaigns_for=("x", "y"),
            preferred_for=preferred,
            live_for_s=60.0,
        )

    leases = [LeaseStatus("x", "held", holder="a"), LeaseStatus("y", "free")]
    out = {le.name: le for le in placed(leases, [replica("a"), replica("b", ("x",))])}
    assert out["x"].placed_on == "b" and out["x"].preferred == ("b",)
    assert out["x"].away_from_preferred
    assert out["y"].placed_on == "a" and not out["y"].away_from_preferred
    # The preferred holder is not live: nothing to flag, placement picks among the others.
    out = {le.name: le for le in placed(leases, [replica("a"), replica("b", ("x",), False)])}
    assert out["x"].placed_on == "a" and not out["x"].away_from_preferred
