"""Directed episodes: one fault at a chosen moment, on virtual time, with a measured outcome.

The random runs (:mod:`tests.sim.scenario`) find what nobody thought of; these pin the
defects of issue 20 with the exact fault that showed each one, and report the number the
issue is about (seconds from the fault to the next holder).
"""

from __future__ import annotations

from dataclasses import replace

from leasectl.leases import LeaseEvent
from tests.sim.scenario import Options, Replica, Sim, draw_options
from tests.sim.world import Proc

#: fifteen leased loops, as the shipped default config's
LEASES = 15


def quiet_options(seed: int, *, replicas: int = 3, **over: object) -> Options:
    """The default settings (spread placement, direct standby), no random faults."""
    base = draw_options(seed)
    return replace(
        base,
        replicas=replicas,
        leases=LEASES,
        placement="spread",
        standby="direct",
        acquire_interval=1.0,
        heartbeat_interval=1.0,
        lease_ttl=5.0,
        eviction_grace=2.0,
        placement_step=0.4,
        rebalance_after=3.0,
        rebalance_cooldown=5.0,
        latency=0.001,
        clog_p=0.0,
        faults_for=0.0,
        kinds=(),
        server_faults=False,
        **over,  # type: ignore[arg-type]
    )


def _world(opts: Options, start: int) -> Sim:
    import logging

    logging.getLogger("leasectl").setLevel(logging.CRITICAL)
    sim = Sim(opts)
    sim.world.after_step = sim.check
    for r in sim.replicas[:start]:
        sim.boot(r)
    return sim


def crash_after_rebalance(seed: int, bugs: tuple[str, ...] = (), delay: float = 0.06) -> float:
    """Two replicas settle, a third joins; the first lease a rebalance hands it is taken, and
    the receiver is killed ``delay`` seconds later. Returns the seconds from the kill until
    another replica holds that lease (issue 20: 2.14 s before the fix)."""
    sim = _world(quiet_options(seed, bugs=bugs), start=2)
    handed: dict[str, str] = {}
    state: dict[str, float | str] = {}

    def hook(rid: str, proc: Proc, ev: LeaseEvent) -> None:
        if ev.kind == "released" and ev.reason.startswith("rebalance: to "):
            handed[ev.lease] = ev.reason.removeprefix("rebalance: to ")
        elif ev.kind == "acquired" and "lease" not in state and handed.get(ev.lease) == rid:
            state["lease"] = ev.lease
            victim = next(r for r in sim.replicas if r.rid == rid)
            sim.world.at(sim.world.now + delay, lambda: _kill(sim, victim, state))
        elif ev.kind == "acquired" and ev.lease == state.get("lease") and "killed" in state:
            state.setdefault("taken", sim.world.now)

    sim.hooks.append(hook)
    sim.world.at(8.0, lambda: sim.boot(sim.replicas[2]))
    sim.world.run_until(60.0)
    assert "lease" in state, "no rebalance hand-over happened"
    assert "taken" in state, f"{state['lease']} not taken again within the run"
    return float(state["taken"]) - float(state["killed"])


def _kill(sim: Sim, victim: Replica, state: dict[str, float | str]) -> None:
    state["killed"] = sim.world.now
    sim.log(f"FAULT kill {victim.rid} right after its rebalance acquisition")
    sim._kill(victim)  # noqa: SLF001


def wedged_release(seed: int, bugs: tuple[str, ...] = ()) -> float:
    """Three settled replicas; one holder's tick of a lease wedges and the daemon gives the
    lease up (``abandon``). Returns the seconds from that release to the next holder (issue
    20: one placement step, ~0.4 s, before the release named its receiver)."""
    sim = _world(quiet_options(seed, bugs=bugs), start=3)
    sim.world.run_until(30.0)
    holder = next(r for r in sim.replicas if r.mgr is not None and r.mgr.held())
    assert holder.mgr is not None and holder.proc is not None
    name = sorted(holder.mgr.held())[0]
    state: dict[str, float] = {}

    def hook(rid: str, proc: Proc, ev: LeaseEvent) -> None:
        if ev.lease != name:
            return
        if ev.kind == "released" and rid == holder.rid:
            state["released"] = sim.world.now
        elif ev.kind == "acquired" and "released" in state:
            state.setdefault("taken", sim.world.now)

    sim.hooks.append(hook)
    mgr = holder.mgr
    sim.world.spawn(holder.proc, lambda: mgr.abandon(name, "wedged_tick"), None)
    sim.world.run_until(45.0)
    assert "taken" in state, f"{name} not taken after its wedged holder gave it up"
    return state["taken"] - state["released"]
