"""Who needs a lock session in pooled standby mode (placement.direct_reason), on plain data."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leasectl.placement import Placement, Replica, direct_reason

LEASES = [f"loop-{i}" for i in range(5)]


def view(n: int, leases: list[str] = LEASES) -> list[Replica]:
    return [Replica(f"r{i:03d}", frozenset(leases)) for i in range(n)]


def needed(replicas: list[Replica], holders: dict[str, str | None], **kw: object) -> set[str]:
    free_for: dict[str, float] = kw.get("free_for", {})  # type: ignore[assignment]
    return {
        r.id
        for r in replicas
        if direct_reason(r.id, LEASES, replicas, holders, free_for, 0.4) is not None
    }


def settled(replicas: list[Replica]) -> dict[str, str | None]:
    plan = Placement(replicas)
    return {n: plan.choose(n) for n in LEASES}


def test_at_300_replicas_only_holders_and_one_heir_per_lease_need_a_session() -> None:
    replicas = view(300)
    holders = settled(replicas)
    need = needed(replicas, holders)
    plan = Placement(replicas)
    heirs = {Placement([r for r in replicas if r.id != h]).choose(n) for n, h in holders.items()}
    assert set(holders.values()) <= need
    assert heirs <= need
    assert need == set(holders.values()) | heirs
    assert len(need) <= 2 * len(LEASES)
    assert all(plan.choose(n) == h for n, h in holders.items())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 60), seed=st.integers(0, 10_000))
def test_every_lease_has_its_holder_and_its_heir_direct(n: int, seed: int) -> None:
    replicas = [Replica(f"x{seed}-{i}", frozenset(LEASES)) for i in range(n)]
    holders = settled(replicas)
    need = needed(replicas, holders)
    for lease, holder in holders.items():
        assert holder in need
        heir = Placement([r for r in replicas if r.id != holder]).choose(lease)
        assert heir in need, (lease, holder, heir)
    assert len(need) <= 2 * len(LEASES)


def test_a_lease_held_off_placement_keeps_its_choice_direct_to_receive_it() -> None:
    replicas = view(50)
    holders = settled(replicas)
    lease = LEASES[0]
    choice = holders[lease]
    stranger = next(r.id for r in replicas if r.id not in holders.values())
    holders[lease] = stranger  # held by someone placement did not choose
    need = needed(replicas, holders)
    assert stranger in need and choice in need


def test_a_free_lease_pulls_in_its_choice_at_once_and_others_by_rank() -> None:
    replicas = view(20)
    lease = LEASES[0]
    holders: dict[str, str | None] = {n: None for n in LEASES}
    plan = Placement(replicas)
    ranking = [r.id for r in plan.ranking(lease)]
    need = needed(replicas, holders)
    assert ranking[0] in need
    third = ranking[3]
    assert direct_reason(third, [lease], replicas, holders, {lease: 0.4 * 2}, 0.4) is None
    reason = direct_reason(third, [lease], replicas, holders, {lease: 0.4 * 3}, 0.4)
    assert reason is not None and "turn" in reason


def test_a_replica_that_is_not_a_candidate_never_needs_a_session() -> None:
    replicas = [*view(10), Replica("other", frozenset({"unrelated"}))]
    holders = {n: None for n in LEASES}
    assert direct_reason("other", LEASES, replicas, holders, {n: 99.0 for n in LEASES}, 0.4) is None
    assert direct_reason("missing", LEASES, replicas, holders, {}, 0.4) is None
