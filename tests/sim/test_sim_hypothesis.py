"""The simulator driven by Hypothesis: fault rules in any order, shrunk to the fewest that
fail (the short CI run; ``make sim-soak`` runs the seeded swarm for long)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from tests.sim.scenario import FAULTS, MORE_FAULTS, Fault, Sim, draw_options


class LeaseWorld(RuleBasedStateMachine):
    """A cluster on virtual time; each rule injects one fault and lets time run. Every
    invariant is checked after every simulated step (the world raises on a violation); the
    teardown runs the quiet phase and checks liveness."""

    sim: Sim

    @initialize(seed=st.integers(0, 10_000), replicas=st.integers(1, 4))
    def build(self, seed: int, replicas: int) -> None:
        opts = replace(draw_options(seed), replicas=replicas, kinds=(), faults_for=0.0)
        self.sim = Sim(opts, schedule=[])
        self.sim.start(horizon=10_000.0)
        self.sim.world.run_until(5.0)

    @rule(
        kind=st.sampled_from((*FAULTS, *MORE_FAULTS, "clock_step")),
        sub=st.integers(0, 2**32 - 1),
        dt=st.floats(0.05, 15.0),
    )
    def fault(self, kind: str, sub: int, dt: float) -> None:
        now = self.sim.world.now
        self.sim.inject(Fault(now, kind, sub))
        self.sim.world.run_until(now + dt)

    @rule(dt=st.floats(0.1, 20.0))
    def advance(self, dt: float) -> None:
        self.sim.world.run_until(self.sim.world.now + dt)

    def teardown(self) -> None:
        if hasattr(self, "sim"):
            self.sim.finish()


LeaseWorld.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLeaseWorld = LeaseWorld.TestCase
