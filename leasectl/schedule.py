"""When a loop fires: every N seconds from a fixed anchor, or a cron expression in a time zone.

A fire time is an absolute instant (unix seconds). For a leased loop it is the *slot*: the
key of the tick ledger, so every replica must compute the same instants from the same
declaration. Both kinds are pure functions of their declaration and of ``t``.

- :class:`Every`: ``offset + k * interval`` seconds after the Unix epoch (1970-01-01 00:00
  UTC, a Thursday). ``offset`` pins where in the period the slots fall (``every=86400,
  offset=7200``: daily at 02:00 UTC), so a daily loop never wanders.
- :class:`Cron`: a 5-field (or 6-field, seconds first) cron expression evaluated in an IANA
  time zone by ``cronsim``, which follows Debian cron, including its DST rules for
  fixed-time jobs (both minute and hour fields not starting with ``*``): a local time skipped
  in spring fires at the first valid minute after the jump (``30 2 * * *`` runs at 03:00 on
  that day), and a local time repeated in autumn fires once, at its first occurrence. Jobs
  with ``*`` in the minute or hour field follow real time (an hourly job runs in both of the
  repeated hours and not in the skipped one).

Zone data comes from the ``tzdata`` package when the system has none (slim containers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: How many fires :meth:`Schedule.count_between` counts before it stops (the answer is then
#: "at least this many"): a missed-slot count for metrics, not worth unbounded work.
COUNT_CAP = 10_000


class Schedule(Protocol):
    """Fire instants of a loop (unix seconds)."""

    @property
    def zone(self) -> str: ...

    def next_after(self, t: float) -> float:
        """The first fire strictly after ``t``."""
        ...

    def latest(self, t: float) -> float | None:
        """The last fire at or before ``t`` (None: none in the last 50 years)."""
        ...

    def count_between(self, after: float, until: float, limit: int = COUNT_CAP) -> int:
        """Fires in ``(after, until]``, up to ``limit``."""
        ...

    def describe(self) -> str: ...


def zone_info(tz: str) -> ZoneInfo:
    """The zone named ``tz``, or a ValueError that says what is wrong."""
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Berlin', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}: expected an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc


def check_cron(expr: str) -> None:
    """Raise ValueError naming the problem if ``expr`` is not a cron expression cronsim takes."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"cron must be a cron expression such as '0 2 * * *', got {expr!r}")
    try:
        it = CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(
            f"bad cron expression {expr!r}: {exc} (expected 5 fields: minute hour "
            "day-of-month month day-of-week, or 6 with seconds first)"
        ) from exc
    try:
        next(it)
    except StopIteration:
        raise ValueError(f"cron expression {expr!r} never fires") from None


@dataclass(frozen=True)
class Every:
    """Every ``interval`` seconds, at ``offset + k * interval`` after the Unix epoch."""

    interval: float
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not self.interval > 0 or not math.isfinite(self.interval):
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")
        if not 0 <= self.offset < self.interval:
            raise ValueError(
                f"offset must be in [0, interval={self.interval:g}) seconds, got {self.offset!r}"
            )

    @property
    def zone(self) -> str:
        return "UTC"

    def latest(self, t: float) -> float:
        return ((t - self.offset) // self.interval) * self.interval + self.offset

    def next_after(self, t: float) -> float:
        return self.latest(t) + self.interval

    def count_between(self, after: float, until: float, limit: int = COUNT_CAP) -> int:
        if until <= after:
            return 0
        return min(limit, int(round((self.latest(until) - self.latest(after)) / self.interval)))

    def describe(self) -> str:
        text = f"every {self.interval:g}s"
        return text + (f" +{self.offset:g}s" if self.offset else "")


@dataclass(frozen=True)
class Cron:
    """A cron expression in an IANA time zone (Debian cron semantics, via cronsim)."""

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        check_cron(self.expr)
        zone_info(self.tz)

    @property
    def zone(self) -> str:
        return self.tz

    def _local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, zone_info(self.tz))

    def next_after(self, t: float) -> float:
        # cronsim iterates a fixed-time job in naive local time (Debian's DST rules); in a
        # repeated autumn hour that can answer the first occurrence of a time already passed
        # in its second: such an answer is not "after t", and the next one is.
        it = CronSim(self.expr, self._local(t))
        for fire in it:
            if fire.timestamp() > t:
                return fire.timestamp()
        raise ValueError(f"cron expression {self.expr!r} fires no more")  # pragma: no cover

    def latest(self, t: float) -> float | None:
        # cronsim's reverse search gives a start at or before the last fire; the forward
        # iteration (the one that decides fires, DST rules included) then finds the last one.
        probe = t
        for _ in range(64):
            start = datetime.fromtimestamp(math.floor(probe) + 1, zone_info(self.tz))
            try:
                candidate = next(CronSim(self.expr, start, reverse=True)).timestamp()
            except StopIteration:
                return None
            if candidate > t:  # a DST fix-up moved it forward past t: look earlier
                probe = candidate - 3600
                continue
            fire = self.next_after(candidate - 1)
            if fire > t:  # not a forward fire (a time the DST rules drop): look earlier
                probe = candidate - 1
                continue
            while (following := self.next_after(fire)) <= t:
                fire = following
            return fire
        return None  # pragma: no cover - 64 DST corrections in a row do not happen

    def count_between(self, after: float, until: float, limit: int = COUNT_CAP) -> int:
        n, t = 0, after
        while n < limit:
            t = self.next_after(t)
            if t > until:
                break
            n += 1
        return n

    def describe(self) -> str:
        return f"cron {self.expr!r} {self.tz}"


def nominal_interval(schedule: Schedule, now: float, fires: int = 32) -> float:
    """The longest gap between the next ``fires`` fires: what ``leasectl_loop_interval_seconds``
    exports for a cron loop, so the staleness alert (no success in 3 intervals) does not fire
    over a weekday loop's weekend."""
    if isinstance(schedule, Every):
        return schedule.interval
    longest, t = 0.0, schedule.next_after(now)
    for _ in range(fires):
        following = schedule.next_after(t)
        longest = max(longest, following - t)
        t = following
    return longest


def local_time(t: float, tz: str) -> datetime:
    """``t`` as an aware datetime in the zone ``tz`` (next fire times in the loop's zone)."""
    return datetime.fromtimestamp(t, zone_info(tz))


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


__all__ = [
    "Cron",
    "Every",
    "Schedule",
    "check_cron",
    "local_time",
    "nominal_interval",
    "zone_info",
]
