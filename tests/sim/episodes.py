"""Directed episodes: one fault at a chosen moment, on virtual time, with a measured outcome.

The random runs (:mod:`tests.sim.scenario`) find what nobody thought of; these pin the
defects of issue 20 with the exact fault that showed each one, and report the number the
issue is about (seconds from the fault to the next holder).
"""

from __future__ import annotations

from dataclasses import replace
from random import Random

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


#: The single-fault kinds whose takeover ``leasectl timing`` bounds, by its fault names.
TAKEOVER_KINDS = ("crash", "graceful", "hang", "partition", "database restart")


def takeover_bound(opts: Options, kind: str, down: float = 0.0) -> float:
    """The worst-case takeover ``leasectl timing`` prints for ``kind`` with the run's
    settings and TCP bound (a database restart's: its formula with ``down`` filled in)."""
    from leasectl.cli.timing import explain  # tests may use the CLI; the core may not
    from leasectl.settings import SchedulerSettings, Settings
    from tests.sim.scenario import TCP

    core = opts.settings()
    # the simulated replicas have no scheduler: a graceful stop drains no tick
    settings = Settings(
        database=core.database,
        leases=core.leases,
        scheduler=replace(SchedulerSettings(), shutdown_grace=0.0),
    )
    timing = explain(settings, TCP)
    by_kind = {f.kind: f.takeover_s for f in timing.faults}
    if kind == "database restart":
        ls = core.leases
        return down + ls.reconnect_max_backoff * 1.2 + timing.campaign_max_s
    bound = by_kind[kind]
    assert bound is not None, kind
    return bound


def single_fault(seed: int, kind: str) -> tuple[float, float]:
    """Three settled replicas with the seed's drawn settings (no random faults); one fault
    of ``kind`` hits the holder of ``loop-0`` (or the server). Returns (seconds until a
    replica holds ``loop-0`` again, the bound ``leasectl timing`` gives for that fault)."""
    base = draw_options(seed)
    opts = replace(
        base,
        replicas=3,
        clog_p=0.0,
        faults_for=0.0,
        kinds=(),
        server_faults=kind == "database restart",
    )
    sim = _world(opts, start=3)
    sim.world.run_until(30.0)
    name = "loop-0"
    holder = next(
        (r for r in sim.replicas if r.mgr is not None and r.mgr.lease(name) is not None), None
    )
    assert holder is not None and holder.proc is not None, f"{name} not held after 30 s"
    state: dict[str, float] = {}

    def hook(rid: str, proc: Proc, ev: LeaseEvent) -> None:
        other = kind == "database restart" or rid != holder.rid or proc is not holder.proc
        if ev.lease == name and ev.kind == "acquired" and "fault" in state and other:
            state.setdefault("taken", sim.world.now)

    sim.hooks.append(hook)
    ls = opts.settings().leases
    hang = ls.lease_ttl + ls.eviction_grace + 2 * ls.acquire_interval * (1 + ls.acquire_jitter)
    rng = Random(f"single:{seed}:{kind}")
    down = rng.uniform(0.5, 5.0)
    state["fault"] = sim.world.now
    if kind == "crash":
        sim._kill(holder)  # noqa: SLF001
    elif kind == "graceful":
        sim._stop(holder)  # noqa: SLF001
    elif kind == "hang":
        holder.proc.paused_until = sim.world.now + 3 * hang
    elif kind == "partition":
        for k in ("lock", "watch", "standby", "work"):
            sim._partition(sim.link(holder, k), 3 * hang)  # noqa: SLF001
    elif kind == "database restart":
        sim.server_faulted = True
        sim.server.restart(down)
    sim.log(f"FAULT {kind} ({holder.rid} holds {name})")
    sim.world.run_until(30.0 + 4 * hang + down + 10.0)
    assert "taken" in state, f"{name} not held again after a {kind}"
    return state["taken"] - state["fault"], takeover_bound(opts, kind, down)
