"""Cluster-wide rate limits: three replicas share one cap, counted in the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from leasectl import DatabaseUnavailable
from leasectl.limits import RateLimiter, bucket_key
from leasectl.settings import LimitSettings
from tests.child_output import OutputFile, exit_code, tail
from tests.conftest import REPO, wait_until
from tests.integration.conftest import query

RATE, BURST = 20.0, 5
# Rows are stamped just after their acquire, in a separate statement: allow this much delay.
INSERT_SLACK_S = 0.25


@pytest.mark.slow
def test_three_replicas_share_one_cap(
    dsn: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(
        LEASECTL_DSN=dsn,
        LEASECTL_APP="tests.apps.limited:app",
        LEASECTL_METRICS__LISTEN="",
        LEASECTL_LIMITS__TEST=f"{{rate: {RATE}, per: 1, burst: {BURST}}}",
        PYTHONPATH=str(REPO),
    )
    # A file, not a pipe nobody reads: a replica blocked writing a log line to a full pipe
    # cannot finish its shutdown (seen once under load).
    logs = [OutputFile(tmp_path / f"lim-{i}.log") for i in range(3)]
    for i, log in enumerate(logs):
        procs.append(
            log.popen(
                [sys.executable, "-m", "leasectl.cli", "run", "--replica-id", f"lim-{i}"],
                env=env,
                cwd=REPO,
            )
        )

    def events_by_replica() -> dict[str, int]:
        if not query(dsn, "SELECT to_regclass('limit_events') IS NOT NULL")[0][0]:
            return {}
        return dict(query(dsn, "SELECT replica, count(*) FROM limit_events GROUP BY replica"))

    # Every replica got some of the budget, and enough events happened to measure a rate.
    wait_until(
        lambda: len(events_by_replica()) == 3 and sum(events_by_replica().values()) >= 150,
        timeout=90,
        what="150 events from three replicas",
    )
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p, log in zip(procs, logs, strict=True):
        assert exit_code(p, 60, log) == 0, tail(log)
    rows = [
        r[0]
        for r in query(dsn, "SELECT extract(epoch FROM at)::float8 FROM limit_events ORDER BY at")
    ]
    span = rows[-1] - rows[0]
    bound = RATE * (span + INSERT_SLACK_S) + BURST
    assert len(rows) <= bound, f"{len(rows)} events in {span:.2f}s exceed {bound:.1f}"
    # Any one-second window: at most rate x 1 s + burst (+ the stamping slack).
    worst, j = 0, 0
    for i, t in enumerate(rows):
        while rows[j] < t - 1.0:
            j += 1
        worst = max(worst, i - j + 1)
    assert worst <= RATE * (1.0 + INSERT_SLACK_S) + BURST, worst
    # The limiter let the budget through (it is a limit, not a stop): well over half of it.
    assert len(rows) >= 0.5 * RATE * span, (len(rows), span)


def test_scoped_buckets_and_unconfigured_names(dsn: str) -> None:
    limits = {
        "webhook": LimitSettings(rate=1, per=60, burst=2, per_scope=True),
        "smtp": LimitSettings(rate=1, per=60, burst=1),
    }
    with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
        limiter = RateLimiter(pool, limits)
        assert [bool(limiter.try_acquire("webhook", "a.example")) for _ in range(3)] == [
            True,
            True,
            False,
        ]
        # Another host has its own bucket; smtp ignores the scope (one shared bucket).
        assert limiter.try_acquire("webhook", "b.example")
        assert limiter.try_acquire("smtp", "x.example")
        refused = limiter.try_acquire("smtp", "y.example")
        assert not refused and 59 <= refused.retry_after <= 60.5
        assert limiter.try_acquire("unconfigured")  # no limit, no statement
        keys = sorted(r[0] for r in query(dsn, "SELECT key FROM leasectl_rate_limits"))
        assert keys == ["smtp", "webhook:a.example", "webhook:b.example"]
        # Nothing is idle yet (every bucket is still draining): the GC keeps them all.
        assert limiter.collect_garbage(idle_s=0) == 0
    assert bucket_key("webhook", "h", limits["webhook"]) == "webhook:h"


def test_database_unreachable_fails_closed() -> None:
    with ConnectionPool(
        "host=127.0.0.1 port=1 dbname=none connect_timeout=1",
        min_size=0,
        max_size=1,
        open=False,
        timeout=1.0,
    ) as pool:
        limiter = RateLimiter(pool, {"smtp": LimitSettings(rate=1)})
        with pytest.raises(DatabaseUnavailable, match="fail closed"):
            limiter.try_acquire("smtp")


def test_unconfigured_limit_name_is_counted_and_warned_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from leasectl.metrics import REGISTRY

    def used() -> float:
        value = REGISTRY.get_sample_value(
            "leasectl_rate_limit_unconfigured_total", {"limit": "smpt"}
        )
        return value or 0.0

    before = used()
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        limiter = RateLimiter(pool, {"smtp": LimitSettings(rate=1, per=60, burst=1)})
        with caplog.at_level("WARNING", logger="leasectl.limits"):
            decisions = [limiter.try_acquire("smpt") for _ in range(3)]
    assert all(d.allowed for d in decisions)  # not configured: not limited
    assert used() - before == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "leasectl.limits"]
    assert warnings == [
        "rate limit 'smpt' is not configured (limits.smpt): its events are not limited; "
        "configured limits: smtp"
    ]
