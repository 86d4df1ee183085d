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
    assert plan.missed == 6  # 600, 700, ..., 1100 are passed over (counted in metrics)


def test_max_delay_records_a_late_slot_as_missed_instead_of_running_it() -> None:
    # The 13-hour outage: the 02:00 slot must not run at 15:00 unasked.
    daily = spec(interval=86400.0, offset=7200.0, jitter=0.0, max_delay=3600.0)
    two_am = 86400.0 * 100 + 7200
    late = plan_leased(daily, two_am + 13 * 3600, last_done=two_am - 86400)
    assert late.slot is None and late.missed_through == two_am and late.missed == 1
    assert late.wake_at == two_am + 86400
    on_time = plan_leased(daily, two_am + 600, last_done=two_am - 86400)
    assert on_time.slot == two_am and on_time.missed == 0


def test_misfire_all_runs_missed_slots_in_order_bounded_by_catch_up() -> None:
    every = spec(misfire="all", catch_up=3, jitter=0.0)
    # last done 500; due 600..1200 (7 slots); only the newest 3 (1000, 1100, 1200) run.
    first = plan_leased(every, 1290, last_done=500)
    assert first.slot is None and first.missed_through == 900 and first.missed == 4
    assert [plan_leased(every, 1290, last_done=d).slot for d in (900, 1000, 1100)] == [
        1000,
        1100,
        1200,
    ]
    assert plan_leased(every, 1290, last_done=1200).slot is None
    # max_delay still applies to each caught-up slot.
    strict = spec(misfire="all", catch_up=3, jitter=0.0, max_delay=150.0)
    plan = plan_leased(strict, 1290, last_done=1000)
    assert plan.slot is None and plan.missed_through == 1100 and plan.wake_at == 1290
    assert plan_leased(strict, 1290, last_done=1100).slot == 1200


def test_offset_anchors_interval_slots() -> None:
    daily = spec(interval=86400.0, offset=7200.0, jitter=0.0)
    plan = plan_leased(daily, 86400.0 * 5 + 3600, last_done=86400.0 * 4 + 7200)
    assert plan.slot is None and plan.wake_at == 86400.0 * 5 + 7200


def test_default_jitter_is_bounded_seconds_and_zero_for_cron() -> None:
    assert spec(jitter=None, interval=30.0).jitter_s == 3.0
    assert spec(jitter=None, interval=86400.0).jitter_s == 10.0
    assert spec(jitter=None, interval=0.0, cron="0 2 * * *").jitter_s == 0.0
    with pytest.raises(ValueError, match="jitter"):
        spec(jitter=100.0, interval=100.0)


def test_cron_spec_rejects_both_schedules_and_bad_input() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        spec(interval=60.0, cron="* * * * *")
    with pytest.raises(ValueError, match="bad cron expression '0 25 \\* \\* \\*'"):
        spec(interval=0.0, cron="0 25 * * *")
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Nowhere'"):
        spec(interval=0.0, cron="0 2 * * *", tz="Europe/Nowhere")
    with pytest.raises(ValueError, match="tz is for cron"):
        spec(interval=60.0, tz="Europe/Berlin")
    with pytest.raises(ValueError, match="misfire"):
        spec(misfire="later")


def test_skip_drops_a_late_slot_but_runs_an_on_time_one() -> None:
    # skip's grace defaults to max(jitter, 1 s): 10 s here (jitter is in seconds).
    late = plan_leased(spec(misfire="skip", jitter=10.0), 1290, last_done=500)
    assert late.slot is None and late.wake_at == 1300
    assert late.missed_through == 1200 and late.missed == 7  # 600..1200, recorded missed
    on_time = plan_leased(spec(misfire="skip", jitter=10.0), 1205, last_done=500)
    assert on_time.slot == 1200 and on_time.missed == 6


def test_backoff_grows_exponentially_and_is_capped() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_spec_validation_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="interval"):
        spec(interval=0)
    with pytest.raises(ValueError, match="placement"):
        spec(placement="somewhere")
