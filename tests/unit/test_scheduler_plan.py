"""Pure slot arithmetic of the scheduler: no database, no sleeping."""

from __future__ import annotations

import pytest

from leasectl.loop import LoopSpec, TickContext
from leasectl.scheduler import backoff_delay, next_slot, plan_leased, slot_of


def _noop(ctx: TickContext) -> None:
    return None


def spec(**kw: object) -> LoopSpec:
    base: dict[str, object] = {
        "name": "digest",
        "interval": 100.0,
        "placement": "leased",
        "run": _noop,
        "jitter": 0.1,
    }
    base.update(kw)
    return LoopSpec(**base)  # type: ignore[arg-type]


def test_slots_align_to_interval() -> None:
    assert slot_of(1234.5, 100) == 1200
    assert next_slot(1234.5, 100) == 1300
    assert slot_of(1300, 100) == 1300


def test_no_history_runs_now_only_with_run_on_start() -> None:
    assert plan_leased(spec(run_on_start=True), 1234, None, started=1234).slot == 1200
    waiting = plan_leased(spec(run_on_start=False), 1234, None, started=1234)
    assert waiting.slot is None and waiting.wake_at == 1300


def test_no_history_without_run_on_start_runs_the_first_boundary_after_start() -> None:
    # Regression: the slot after start must run, not be pushed forward for ever.
    first = plan_leased(spec(run_on_start=False), 1301, None, started=1234)
    assert first.slot == 1300
    later = plan_leased(spec(run_on_start=False), 1450, None, started=1234)
    assert later.slot == 1400  # missed boundaries coalesce into the current slot


def test_done_slot_is_not_repeated_after_restart() -> None:
    plan = plan_leased(spec(), 1299, last_done=1200)
    assert plan.slot is None and plan.wake_at == 1300


def test_coalesce_runs_current_slot_once_for_many_missed() -> None:
    plan = plan_leased(spec(misfire="coalesce"), 1290, last_done=500)
    assert plan.slot == 1200


def test_skip_drops_a_late_slot_but_runs_an_on_time_one() -> None:
    late = plan_leased(spec(misfire="skip"), 1290, last_done=500)
    assert late.slot is None and late.wake_at == 1300
    on_time = plan_leased(spec(misfire="skip"), 1205, last_done=500)
    assert on_time.slot == 1200


def test_backoff_grows_exponentially_and_is_capped() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_spec_validation_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        spec(interval=0)
    with pytest.raises(ValueError, match="placement"):
        spec(placement="somewhere")
