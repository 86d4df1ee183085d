"""Cron and interval schedules: fires across a year, DST in two zones, all with fixed clocks."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from leasectl.loop import LoopSpec, TickContext
from leasectl.schedule import Cron, Every, local_time
from leasectl.scheduler import plan_leased

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def _noop(ctx: TickContext) -> None:
    return None


def _fires(sched: Cron | Every, start: datetime, n: int) -> list[datetime]:
    out, t = [], start.timestamp()
    for _ in range(n):
        t = sched.next_after(t)
        out.append(datetime.fromtimestamp(t, start.tzinfo))
    return out


@pytest.mark.parametrize(
    ("expr", "tz"),
    [
        ("0 2 * * *", "Europe/Berlin"),
        ("30 2 * * *", "America/New_York"),
        ("0 9 * * MON-FRI", "Europe/Berlin"),
        ("*/20 * * * *", "America/New_York"),
        ("15 1 1 * *", "UTC"),
    ],
)
def test_a_year_of_fires_matches_cronsim(expr: str, tz: str) -> None:
    zone = ZoneInfo(tz)
    start = datetime(2026, 1, 1, tzinfo=zone)
    end = datetime(2027, 1, 1, tzinfo=zone)
    expected = []
    for fire in CronSim(expr, start):
        if fire >= end:
            break
        expected.append(fire.timestamp())
    ours, t = [], start.timestamp()
    while (t := Cron(expr, tz).next_after(t)) < end.timestamp():
        ours.append(t)
    assert ours == expected and len(ours) > 10
    # latest() is the inverse: the last fire at or before any instant of the year.
    sched = Cron(expr, tz)
    for at in expected[:: max(1, len(expected) // 50)]:
        assert sched.latest(at) == at
        assert sched.latest(at + 1) == at
        assert sched.next_after(at - 1) == at


def test_spring_forward_skipped_local_time_runs_right_after_the_jump() -> None:
    # Berlin 2026-03-29: 02:00 -> 03:00. A 02:30 job runs at 03:00 that day (Debian cron).
    fires = _fires(Cron("30 2 * * *", "Europe/Berlin"), datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3)
    assert [f.strftime("%m-%d %H:%M %Z") for f in fires] == [
        "03-29 03:00 CEST",
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]
    # New York 2026-03-08: 02:00 -> 03:00, same rule in another zone.
    ny = _fires(Cron("30 2 * * *", "America/New_York"), datetime(2026, 3, 7, tzinfo=NEW_YORK), 2)
    assert [f.strftime("%m-%d %H:%M %Z") for f in ny] == ["03-07 02:30 EST", "03-08 03:00 EDT"]


def test_autumn_repeated_local_time_runs_once_at_its_first_occurrence() -> None:
    # Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice, the job runs once.
    sched = Cron("30 2 * * *", "Europe/Berlin")
    fires = _fires(sched, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2)
    assert [f.strftime("%m-%d %H:%M %Z") for f in fires] == ["10-25 02:30 CEST", "10-26 02:30 CET"]
    # Asked during the second 02:15 (after the first 02:30 ran), the next fire is tomorrow.
    second = datetime(2026, 10, 25, 2, 15, tzinfo=BERLIN, fold=1).timestamp()
    assert local_time(sched.next_after(second), "Europe/Berlin").day == 26
    assert sched.latest(second) == fires[0].timestamp()
    # New York 2026-11-01: 01:30 happens twice.
    ny = _fires(
        Cron("30 1 * * *", "America/New_York"), datetime(2026, 10, 31, 12, tzinfo=NEW_YORK), 2
    )
    assert [f.strftime("%m-%d %H:%M %Z") for f in ny] == ["11-01 01:30 EDT", "11-02 01:30 EST"]


def test_hourly_jobs_follow_real_time_across_dst() -> None:
    # "*" in the hour field: every real hour, so both repeated 02:00s and no skipped one.
    autumn = _fires(
        Cron("0 * * * *", "Europe/Berlin"), datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN), 4
    )
    assert [f.strftime("%H %Z") for f in autumn] == ["01 CEST", "02 CEST", "02 CET", "03 CET"]
    spring = _fires(
        Cron("0 * * * *", "Europe/Berlin"), datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN), 2
    )
    assert [f.strftime("%H %Z") for f in spring] == ["01 CET", "03 CEST"]


def test_leased_cron_plan_with_a_fixed_clock() -> None:
    spec = LoopSpec(
        name="report",
        interval=0,
        placement="leased",
        run=_noop,
        cron="0 2 * * *",
        tz="Europe/Berlin",
        run_on_start=False,
        max_delay=3600,
    )
    assert spec.jitter_s == 0.0 and spec.interval == 86400.0
    two = datetime(2026, 6, 10, 2, tzinfo=BERLIN).timestamp()
    yesterday = two - 86400
    # On time: the slot is the fire instant.
    assert plan_leased(spec, two + 5, last_done=yesterday).slot == two
    # After a 13-hour outage: recorded missed, next fire tomorrow 02:00.
    late = plan_leased(spec, two + 13 * 3600, last_done=yesterday)
    assert late.slot is None and late.missed_through == two
    assert late.wake_at == two + 86400
    # The spring-forward day's slot is 03:00 local, the instant cronsim gives.
    spring = datetime(2026, 3, 29, 3, tzinfo=BERLIN).timestamp()
    assert plan_leased(spec, spring + 1, last_done=spring - 86400 + 3600).slot == spring


def test_every_with_offset_and_describe() -> None:
    daily = Every(86400, offset=2 * 3600)
    t = datetime(2026, 6, 10, 12, tzinfo=ZoneInfo("UTC")).timestamp()
    assert local_time(daily.next_after(t), "UTC").hour == 2
    assert daily.count_between(t, t + timedelta(days=3).total_seconds()) == 3
    assert daily.describe() == "every 86400s +7200s"
    with pytest.raises(ValueError, match="offset"):
        Every(60, offset=60)


def test_a_cron_loops_interval_is_its_longest_gap_for_the_staleness_alert() -> None:
    weekdays = LoopSpec(
        name="standup", interval=0, placement="leased", run=_noop, cron="0 9 * * MON-FRI"
    )
    assert weekdays.interval == 3 * 86400.0  # Friday 09:00 to Monday 09:00
    hourly = LoopSpec(name="h", interval=0, placement="everywhere", run=_noop, cron="0 * * * *")
    assert hourly.interval == 3600.0
