"""The lease manager's decisions (:mod:`leasectl.lease_core`) on values: no session, no
thread, no clock but the ``now`` each test passes.

The manager's tests (``test_lease_manager.py``) drive the same rules through the lock loop
and an in-memory database; these pin each rule on its own, with the numbers it is about.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from leasectl import control, placement
from leasectl.lease_core import RESERVE_STEPS, CoreConfig, Eviction, LeaseCore
from leasectl.leases import Lease
from leasectl.locks import Contender, Drain
from leasectl.placement import Replica
from leasectl.settings import LeaseSettings

LS = replace(
    LeaseSettings(),
    lease_ttl=5.0,
    eviction_grace=2.0,
    placement_step=0.4,
    rebalance_after=3.0,
    rebalance_cooldown=5.0,
    step_down_cooldown=30.0,
)
LEASES = [f"loop-{i}" for i in range(6)]
IDS = ["a", "b", "c"]


def core(me: str = "a", *, leases: list[str] = LEASES, **over: object) -> LeaseCore:
    config = CoreConfig(me, leases, [], True, True, False, LS)
    return LeaseCore(replace(config, **over))  # type: ignore[arg-type]


def view(*ids: str, leases: list[str] = LEASES, live_for: float = 60.0) -> list[Replica]:
    return [Replica(i, frozenset(leases), live_for=live_for) for i in ids]


def held(c: LeaseCore, name: str, *, epoch: int = 1, until: float = 105.0) -> Lease:
    lease = Lease(name, epoch, until, lambda: 0.0)
    c.acquired(name, lease, 100.0)
    return lease


def free(name: str) -> Contender:
    return Contender(name, False, None, None, None, None)


def taken(
    name: str, by: str, pid: int, *, age: float = 0.5, row_pid: int | None = None
) -> Contender:
    return Contender(name, False, age, pid, pid if row_pid is None else row_pid, by)


def ranked(name: str, ids: list[str] = IDS) -> list[str]:
    return [r.id for r in placement.Placement(view(*ids)).ranking(name)]


def test_a_free_lease_is_tried_at_once_by_rank_0_and_after_rank_steps_by_the_others() -> None:
    name = LEASES[0]
    order = ranked(name)
    cores = {rid: core(rid) for rid in IDS}
    for c in cores.values():
        c.set_view(view(*IDS))
        c.release_heard(name, 100.0)  # seen free at 100.0
    for rank, rid in enumerate(order):
        plan = cores[rid].campaign_plan(100.0)
        assert plan is not None
        assert plan.delays[name] == pytest.approx(rank * LS.placement_step)
        assert (name in plan.tried) == (rank == 0)
    # Rank 2 tries it once 2 placement steps have passed since it saw it free.
    last = cores[order[2]]
    plan = last.campaign_plan(100.0 + 2 * LS.placement_step)
    assert plan is not None and name in plan.tried


def test_the_rank_wait_is_changed_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """``placement.turn_delay`` is the rule: the campaign and the standby's question both
    follow it."""
    name = LEASES[0]
    third = ranked(name)[2]
    c = core(third, leases=[name], pooled=True)
    c.set_view(view(*IDS, leases=[name]))
    assert c.try_delays([name], 100.0)[name] == pytest.approx(0.8)
    monkeypatch.setattr(placement, "turn_delay", lambda rank, step: 10.0 * rank)
    c.set_view(view(*IDS, leases=[name], live_for=61.0))  # same ranks: the plan is cached
    assert c.try_delays([name], 100.0)[name] == 20.0
    c.polled({name: None}, 100.0)  # a standby saw it free at 100.0
    assert c.direct_reason(119.9) is None
    assert c.direct_reason(120.0) == f"{name} is free and it is its turn (rank 2)"


def test_a_reserved_lease_is_tried_only_by_its_receiver_until_it_lapses() -> None:
    name = LEASES[0]
    first = ranked(name)[0]
    other = next(r for r in IDS if r != first)
    c = core(first)
    c.set_view(view(*IDS))
    c.hand_over_heard(control.HandOver((name,), other, "x"), 100.0)
    plan = c.campaign_plan(100.0)
    assert plan is not None and name in plan.watched  # rank 0, but reserved for another
    lapse = 100.0 + RESERVE_STEPS * LS.placement_step + 1.0
    seen = c.campaign_seen(plan, [free(name)], 100.0, 100.0)
    assert seen.due == lapse  # looked at again when the reservation lapses
    plan = c.campaign_plan(lapse + 0.001)
    assert plan is not None and name in plan.tried and name not in c.state.reserved
    mine = core(other)
    mine.set_view(view(*IDS))
    assert mine.hand_over_heard(control.HandOver((name,), other, "x"), 100.0)  # try now
    plan = mine.campaign_plan(100.0)
    assert plan is not None and name in plan.tried


def test_a_reservation_ends_when_its_receiver_takes_the_lease_or_is_gone() -> None:
    c = core("a")
    c.set_view(view(*IDS))
    c.reserve([LEASES[0], LEASES[1]], "b", 100.0)
    plan = c.campaign_plan(100.1)
    assert plan is not None
    c.campaign_seen(plan, [taken(LEASES[0], "b", 42)], 100.1, 100.1)
    assert list(c.state.reserved) == [LEASES[1]]  # the one b took is over
    campaign, dropped = c.replica_gone("b", 100.2)
    assert campaign and dropped and c.state.reserved == {}
    assert [r.id for r in c.replicas or []] == ["a", "c"]


def test_a_crashed_holder_seen_by_a_campaign_makes_its_next_candidate_rank_0_now() -> None:
    name = LEASES[0]
    order = ranked(name)
    holder, heir = order[0], order[1]
    c = core(heir)
    c.set_view(view(*IDS))
    c.release_heard(name, 100.0)
    plan = c.campaign_plan(100.0)
    assert plan is not None and name in plan.watched
    gone = Contender(name, False, None, None, None, holder, holder_gone=True)
    seen = c.campaign_seen(plan, [gone], 100.0, 100.002)
    assert seen.due == 100.0  # its turn already: rank 0 in the view without the holder
    assert holder not in [r.id for r in c.replicas or []]
    assert seen.aims == [c.watch_target()]  # the watch re-aims at the new successor


def test_a_holder_is_evicted_only_past_ttl_plus_grace() -> None:
    c = core("a")
    threshold = LS.lease_ttl + LS.eviction_grace
    name = LEASES[0]
    assert c.stale_holder(taken(name, "b", 42, age=threshold), 100.0) is None
    assert c.stale_holder(taken(name, "b", 42, age=threshold + 0.1), 100.0) == Eviction(
        name, 42, "b", threshold + 0.1
    )
    # A row naming another session than the lock's holder: evicted only once that persists.
    between = taken(name, "b", 42, age=0.1, row_pid=41)
    assert c.stale_holder(between, 100.0) is None
    assert c.stale_holder(between, 100.0 + threshold) is None
    assert c.stale_holder(between, 100.0 + threshold + 0.1) is not None
    assert c.stale_holder(free(name), 200.0) is None


def test_a_heartbeat_renews_what_it_proved_and_gives_back_the_rest() -> None:
    c = core("a")
    x, y = held(c, LEASES[0]), held(c, LEASES[1])
    gone = c.heartbeat_proved([x, y], [LEASES[1]], 110.0)
    assert gone == [y]
    assert x._valid_at(109.9) and not x._valid_at(110.0)  # noqa: SLF001 - renewed to 110
    assert c.expired(110.0) == [x, y]  # y is the manager's to drop (it still holds it here)
    c.forget(y)
    assert c.expired(104.0) == [] and c.expired(110.0) == [x]


def test_a_lease_is_handed_over_only_to_a_settled_choice_after_the_cooldown() -> None:
    mine = [n for n in LEASES if placement.Placement(view(*IDS)).choose(n) != "a"]
    c = core("a")
    c.set_view(view("a", live_for=60.0))
    for name in LEASES:
        held(c, name)  # acquired at 100.0, alone
    c.set_view([*view("a"), *view("b", "c", live_for=1.0)])
    assert c.plan_rebalance(104.0) == []  # within rebalance_cooldown
    assert c.plan_rebalance(106.0) == []  # b and c still settling
    c.set_view([*view("a"), *view("b", "c", live_for=LS.rebalance_after)])
    marked = c.plan_rebalance(106.0)
    assert sorted(n for n, _ in marked) == sorted(mine)
    assert c.plan_rebalance(107.0) == []  # marked once, not again
    # The release waits for a running tick; tick_begin refuses while a hand-over is pending.
    busy = mine[0]
    assert not c.tick_begin(busy, c.state.held[busy], 107.0)
    c.state.ticking.add(busy)
    assert busy not in c.hand_over_ready()
    assert c.tick_end(busy)  # the hand-over waited for it: do it now
    assert busy in c.hand_over_ready()


def test_a_crash_said_again_and_again_campaigns_once_per_ttl() -> None:
    c = core("a")
    c.set_view(view(*IDS))
    assert c.replica_gone("b", 100.0) == (True, True)
    assert c.replica_gone("b", 101.0) == (False, False)
    assert c.replica_gone("b", 100.0 + LS.lease_ttl) == (True, False)
    assert c.replica_gone("a", 100.0) == (False, False)  # itself: never
    assert core("a", may_lead=False).replica_gone("b", 100.0) == (False, False)


def test_a_step_down_of_this_replica_keeps_it_away_from_every_lease() -> None:
    c = core("a")
    held(c, LEASES[0])
    mine = c.step_down_asked(control.StepDown(None, "a", 10.0), 100.0)
    assert mine == [LEASES[0]]
    assert c.candidacy(109.9) == [] and c.candidacy(110.0) == sorted(LEASES)
    assert c.step_down_asked(control.StepDown(None, "b", 10.0), 100.0) == []
    # Read from its row 4 s after it was asked (a standby): the 6 s left, logged once.
    d = core("a")
    assert d.drain(drain=Drain(4.0, 10.0), now=100.0) == 6.0
    assert d.drain(drain=Drain(4.5, 10.0), now=100.5) is None  # the same request again
    assert d.candidacy(105.9) == [] and d.candidacy(106.0) == sorted(LEASES)


def test_a_standby_needs_a_lock_session_when_chosen_or_heir_and_not_otherwise() -> None:
    name = LEASES[0]
    order = ranked(name, [*IDS, "d", "e", "f"])
    one = [name]
    cores = {rid: core(rid, leases=one, pooled=True) for rid in order}
    for c in cores.values():
        c.set_view(view(*order, leases=one))
        c.polled({name: order[0]}, 100.0)
    assert cores[order[0]].direct_reason(100.0) == f"holds {name}"  # as its poll saw it
    assert (cores[order[1]].direct_reason(100.0) or "").startswith("heir of")
    assert cores[order[-1]].direct_reason(100.0) is None
    assert cores[order[-1]].idle_for(100.0, 100.0) == 0.0
    assert cores[order[-1]].idle_for(103.0, 103.0) == 3.0
    assert cores[order[-1]].direct_reason(100.0, commands=True) is not None
    for c in cores.values():
        assert c.cache_problem(100.0) is None


def test_a_view_read_before_a_peer_was_heard_gone_does_not_bring_it_back() -> None:
    """A heartbeat's live view can arrive after a ``replica_gone`` NOTIFY that was delivered
    while the heartbeat ran: the view is older than the news. Putting the dead peer back
    made its lease's next candidate wait a placement step (0.9 s after a rebalance)."""
    name = LEASES[0]
    dead, heir = ranked(name)[:2]
    c = core(heir)
    c.set_view(view(*IDS))
    assert c.try_delays([name], 100.0)[name] > 0  # ranked behind the holder
    assert c.replica_gone(dead, 100.0) == (True, True)
    assert c.try_delays([name], 100.0)[name] == 0  # next candidate: tries at once
    c.set_view(view(*IDS), observed_at=99.9)  # read before the news
    assert dead not in {r.id for r in c.replicas or []}
    assert c.try_delays([name], 100.1)[name] == 0
    c.set_view(view(*IDS), observed_at=100.2)  # read after it: the peer is back (a restart)
    assert dead in {r.id for r in c.replicas or []}


def test_a_lease_still_locked_by_a_peer_just_heard_gone_is_tried_again_at_once() -> None:
    """The server frees a dead session's locks one by one and wakes its watcher as it goes:
    the campaign sent on that ``replica_gone`` can still find the lease locked. Its next
    candidate tries again within milliseconds, not at the next poll (a second), which let a
    lower-ranked peer take it one placement step after the crash."""
    from leasectl.lease_core import GONE_RETRY, GONE_WINDOW

    name = LEASES[0]
    dead, heir = ranked(name)[:2]
    c = core(heir, leases=[name])
    c.set_view(view(*IDS, leases=[name]))
    c.replica_gone(dead, 100.0)
    plan = c.campaign_plan(100.0)
    assert plan is not None and name in plan.tried
    seen = c.campaign_seen(plan, [taken(name, dead, 4242)], 100.0, 100.005)
    assert seen.due == pytest.approx(100.005 + GONE_RETRY)
    # Long after the news, a lease held by that id is somebody's live session again: the
    # ordinary poll decides.
    later = 100.0 + GONE_WINDOW + 0.1
    plan = c.campaign_plan(later)
    assert plan is not None
    seen = c.campaign_seen(plan, [taken(name, dead, 4243)], later, later + 0.005)
    assert seen.due is None
