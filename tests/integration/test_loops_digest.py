"""digest: once per period per recipient, every expiring certificate listed."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
import pytest

from leasectl.certs import digest
from leasectl.certs.settings import (
    DigestLoop,
    DigestSettings,
    LoopsSettings,
    NotificationSettings,
    SmtpSettings,
)
from leasectl.errors import ConfigError
from tests.integration.leased_helpers import leased, pool_for, smtp_server, tick

SLOT = dt.datetime(2026, 11, 27, 6, 0, tzinfo=dt.UTC)


def settings(port: int, **kw: Any) -> LoopsSettings:
    return LoopsSettings(
        notifications=NotificationSettings(
            smtp=SmtpSettings(host="127.0.0.1", port=port, tls="none")
        ),
        digest=DigestSettings(loop=DigestLoop(enabled=True), **kw),
    )


def seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.owners (id, name, email) VALUES ('o1', 'Team <One>', "
        "'One@Example.com'), "
        "('o2', 'Team Two', 'one@example.com '), ('o3', 'Team Three', 'three@example.com'), "
        "('o4', 'No Mail', NULL)"
    )
    # 73 certificates expiring inside 30 days (more than certctl's clamp of 50) ...
    conn.execute(
        "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, owner_id, "
        "status, expires_at) "
        "SELECT 'exp-' || i, 'exp-' || i, 'host' || i || '.example.com', 'o' || (i % 3 + 1), "
        "'Expiring', now() + make_interval(hours => 6 + i * 9) FROM generate_series(1, 73) i"
    )
    # ... one with a hostile CN, and some that must not be listed.
    conn.execute(
        "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, status, "
        "expires_at) VALUES "
        "('xss', 'xss', '<script>alert(1)</script>', 'Active', now() + interval '3 days'), "
        "('later', 'later', 'later.example.com', 'Active', now() + interval '90 days'), "
        "('revoked', 'revoked', 'revoked.example.com', 'Revoked', now() + interval '5 days'), "
        "('gone', 'gone', 'gone.example.com', 'Expired', now() - interval '1 day')"
    )


def test_sent_once_per_period_per_recipient_with_every_expiring_cert(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed(conn)
    with smtp_server() as (inbox, port):
        spec = digest.build(settings(port))
        assert spec is not None and spec.placement == "leased" and not spec.run_on_start
        with pool_for(dsn) as pool, leased(dsn, "digest") as (_, lease):
            first = tick(spec, pool, lease, tick_at=SLOT)
            again = tick(spec, pool, lease, tick_at=SLOT)  # same slot: a restart, a re-run
            assert len(inbox.messages) == 2
            nxt = tick(spec, pool, lease, tick_at=SLOT + dt.timedelta(days=1))
    assert first.stats == {"sent": 2}
    assert again.stats == {"already_sent": 2}
    assert nxt.stats == {"sent": 2}
    assert len(inbox.messages) == 4
    # Owners' emails, normalised and deduplicated; owner without email skipped.
    assert sorted(m["To"] for m in inbox.messages[:2]) == ["one@example.com", "three@example.com"]
    msg = inbox.messages[0]
    assert msg["Subject"] == "leasectl certificate digest — 2026-11-27"
    assert msg["Message-ID"].startswith("<digest.20261127T060000Z.")
    html = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
    listed = set(re.findall(r"<td>(exp-\d+|xss|later|revoked|gone)</td>", html))
    assert listed == {f"exp-{i}" for i in range(1, 74)} | {"xss"}
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Team &lt;One&gt;" in html
    assert "Expiring within 30 days (74)" in html
    rows = conn.execute(
        "SELECT period_start, recipient, status, epoch, expiring FROM leasectl_certs.digest_sends "
        "ORDER BY period_start, recipient"
    ).fetchall()
    assert rows == [
        (SLOT, "one@example.com", "sent", lease.epoch, 74),
        (SLOT, "three@example.com", "sent", lease.epoch, 74),
        (SLOT + dt.timedelta(days=1), "one@example.com", "sent", lease.epoch, 74),
        (SLOT + dt.timedelta(days=1), "three@example.com", "sent", lease.epoch, 74),
    ]


def test_claim_left_by_an_older_epoch_is_sent_by_the_new_holder(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed(conn)
    # A previous holder claimed the slot for one recipient and died before marking it sent.
    conn.execute(
        "INSERT INTO leasectl_certs.digest_sends (period_start, recipient, status, epoch, replica) "
        "VALUES (%s, 'ops@example.com', 'claimed', 0, 'dead-replica')",
        (SLOT,),
    )
    with smtp_server() as (inbox, port):
        spec = digest.build(settings(port, recipients=("ops@example.com",)))
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "digest") as (_, lease):
            ctx = tick(spec, pool, lease, tick_at=SLOT)
    assert ctx.stats == {"sent": 1}
    assert [m["To"] for m in inbox.messages] == ["ops@example.com"]
    assert conn.execute(
        "SELECT status, epoch, replica FROM leasectl_certs.digest_sends WHERE period_start = %s",
        (SLOT,),
    ).fetchall() == [("sent", lease.epoch, "replica-a")]


def test_failed_send_is_recorded_and_fails_the_tick(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed(conn)
    with smtp_server() as (_, port):
        pass  # the server is gone: connection refused
    spec = digest.build(settings(port, recipients=("ops@example.com",)))
    assert spec is not None
    with pool_for(dsn) as pool, leased(dsn, "digest") as (_, lease):
        with pytest.raises(digest.DigestFailed, match="1 of 1"):
            tick(spec, pool, lease, tick_at=SLOT)
    status, error = conn.execute(
        "SELECT status, error FROM leasectl_certs.digest_sends"
    ).fetchone() or ("", "")
    assert status == "failed" and "SMTP 127.0.0.1" in error


def test_enabled_without_smtp_fails_start() -> None:
    cfg = LoopsSettings(digest=DigestSettings(loop=DigestLoop(enabled=True)))
    with pytest.raises(ConfigError, match="smtp.host"):
        digest.build(cfg)
    assert digest.build(LoopsSettings()) is None  # disabled by default


def test_permanent_refusal_is_recorded_without_failing_the_slot(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed(conn)
    with smtp_server() as (inbox, port):
        spec = digest.build(settings(port, recipients=("ok@example.com", "bad@x\r\nBcc: y")))
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "digest") as (_, lease):
            ctx = tick(spec, pool, lease, tick_at=SLOT)
            again = tick(spec, pool, lease, tick_at=SLOT)  # a re-run retries only the failure
    assert ctx.stats == {"sent": 1, "failed": 1}
    assert again.stats == {"already_sent": 1, "failed": 1}
    assert [m["To"] for m in inbox.messages] == ["ok@example.com"]
    rows = dict(
        conn.execute("SELECT recipient, status FROM leasectl_certs.digest_sends").fetchall()
    )
    assert rows == {"ok@example.com": "sent", "bad@x\r\nBcc: y": "failed"}
