"""renewal_check against the real database: windows, auto_renew, dedup under concurrency."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from leasectl.certs import renewal_check
from tests.integration.everywhere_helpers import (
    add_certificate,
    add_issuer,
    add_job,
    make_ctx,
    pool,
    run_concurrently,
    scalar,
)

__all__ = ["pool"]

DAY = dt.timedelta(days=1)


def add_policy(
    conn: psycopg.Connection[Any],
    policy_id: str,
    *,
    window: int = 30,
    auto_renew: bool = True,
    channels: dict[str, Any] | None = None,
    severity: dict[str, str] | None = None,
    thresholds: list[int] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.renewal_policies (id, name, renewal_window_days, auto_renew,"
        " alert_channels, alert_severity_map, alert_thresholds_days)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            policy_id,
            policy_id,
            window,
            auto_renew,
            json.dumps(channels or {}),
            json.dumps(severity or {}),
            json.dumps(thresholds if thresholds is not None else [30, 14, 7, 0]),
        ),
    )


def seed(conn: psycopg.Connection[Any]) -> None:
    add_issuer(conn)
    conn.execute(
        "INSERT INTO leasectl_certs.owners (id, name, email) VALUES ('alice', 'Alice', "
        "'alice@example.test'),"
        " ('nobody', 'Nobody', NULL)"
    )
    add_policy(conn, "std")
    add_policy(conn, "manual", auto_renew=False)
    add_policy(conn, "short-window", window=7)
    add_policy(conn, "multi", channels={"warning": ["Email", "Webhook"], "critical": []})
    add_policy(conn, "bad", channels={"warning": ["CarrierPigeon", "Email"]}, thresholds=[14])
    own: dict[str, Any] = {"owner_id": "alice"}
    add_certificate(conn, "due", expires_in=10 * DAY, policy_id="std", **own)
    add_certificate(conn, "manual", expires_in=5 * DAY, policy_id="manual", **own)
    add_certificate(conn, "outside", expires_in=10 * DAY, policy_id="short-window", **own)
    add_certificate(conn, "far", expires_in=60 * DAY, policy_id="std", **own)
    add_certificate(conn, "expired", expires_in=-DAY, **own)  # no policy: defaults
    add_certificate(conn, "orphan", expires_in=10 * DAY, policy_id="std", owner_id="nobody")
    add_certificate(conn, "multi", expires_in=10 * DAY, policy_id="multi", **own)
    add_certificate(conn, "bad", expires_in=10 * DAY, policy_id="bad", **own)
    add_certificate(conn, "busy", expires_in=3 * DAY, policy_id="std", **own)
    add_job(conn, "operator-job", "Issuance", certificate_id="busy", status="AwaitingApproval")
    add_certificate(conn, "revoked", status="Revoked", expires_in=3 * DAY, **own)
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type) VALUES ('acme1', 'acme', 'acme')"
    )
    add_certificate(conn, "acme", issuer_id="acme1", expires_in=20 * DAY, policy_id="std", **own)


def test_concurrent_ticks_create_one_job_and_one_alert_each(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    seed(conn)
    ctxs = [make_ctx(pool, loop="renewal_check", replica=f"r{i}") for i in range(3)]

    run_concurrently(*(lambda c=c: renewal_check.run(c) for c in ctxs))
    run_concurrently(*(lambda c=c: renewal_check.run(c) for c in ctxs))

    jobs = conn.execute(
        "SELECT certificate_id, count(*) FROM leasectl_certs.jobs WHERE type = 'Renewal'"
        " GROUP BY certificate_id ORDER BY 1"
    ).fetchall()
    # window + auto_renew honoured; expired certificates are renewed too; busy has its own job
    assert jobs == [("bad", 1), ("due", 1), ("expired", 1), ("multi", 1), ("orphan", 1)]
    statuses = dict(
        conn.execute("SELECT id, status FROM leasectl_certs.managed_certificates").fetchall()
    )
    assert statuses["due"] == "RenewalInProgress"
    assert statuses["manual"] == "Expiring"  # inside the window, but auto_renew is off
    assert statuses["outside"] == "Active"  # outside its 7-day window
    assert statuses["far"] == "Active"
    assert statuses["busy"] == "Expiring"
    assert statuses["revoked"] == "Revoked"
    assert statuses["acme"] == "Expiring"  # no job: leasectl cannot sign for an ACME issuer
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM leasectl_certs.audit_events WHERE action='renewal_job_created'",
        )
        == 5
    )

    alerts = conn.execute(
        "SELECT certificate_id, threshold_days, channel, status, recipient"
        " FROM leasectl_certs.notification_events WHERE type = 'ExpirationWarning' ORDER BY 1, 2, 3"
    ).fetchall()
    expected = {
        ("due", 30, "Email"),
        ("due", 14, "Email"),
        ("manual", 30, "Email"),
        ("manual", 14, "Email"),
        ("manual", 7, "Email"),
        ("outside", 30, "Email"),
        ("outside", 14, "Email"),
        ("expired", 30, "Email"),
        ("expired", 14, "Email"),
        ("expired", 7, "Email"),
        ("expired", 0, "Email"),
        ("multi", 30, "Email"),
        ("multi", 14, "Email"),
        ("multi", 14, "Webhook"),
        ("bad", 14, "Email"),
        ("busy", 30, "Email"),
        ("busy", 14, "Email"),
        ("busy", 7, "Email"),
        ("acme", 30, "Email"),
    }
    assert {(a[0], a[1], a[2]) for a in alerts} == expected
    assert len(alerts) == len(expected)  # once per certificate, threshold and channel
    assert {a[3] for a in alerts} == {"pending"}
    assert {a[4] for a in alerts} == {"alice@example.test"}
    queued = (
        "SELECT count(*) FROM leasectl_certs.audit_events WHERE action = 'expiration_alert_queued'"
    )
    assert scalar(conn, queued) == len(expected)

    skips = conn.execute(
        "SELECT resource_id, action, details->>'threshold_days' FROM leasectl_certs.audit_events"
        " WHERE action LIKE 'expiration_alert_skipped%%' ORDER BY 1, 3"
    ).fetchall()
    assert sorted(skips) == sorted(
        [
            ("orphan", "expiration_alert_skipped_no_recipient", "14"),
            ("orphan", "expiration_alert_skipped_no_recipient", "30"),
            ("bad", "expiration_alert_skipped_invalid_channel", "14"),
        ]
    )

    row = conn.execute(
        "SELECT subject, message, payload FROM leasectl_certs.notification_events"
        " WHERE certificate_id = 'expired' AND threshold_days = 0"
    ).fetchone()
    assert row is not None
    subject, message, payload = row
    assert subject == "[EXPIRED] Certificate expired.example.test has expired"
    assert message.startswith("[EXPIRED] The certificate for expired.example.test has expired")
    assert message.endswith("[threshold:0]")
    assert payload["severity"] == "critical" and payload["threshold_days"] == 0
    due_message = scalar(
        conn,
        "SELECT message FROM leasectl_certs.notification_events WHERE certificate_id='due' AND "
        "threshold_days=14",
    )
    assert due_message.startswith("The certificate for due.example.test will expire in 9 days")


def test_policy_critical_tier_with_no_channels_is_skipped(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    seed(conn)
    conn.execute(
        "UPDATE leasectl_certs.managed_certificates SET expires_at = now() - interval '1 day' "
        "WHERE id = 'multi'"
    )
    renewal_check.run(make_ctx(pool))
    renewal_check.run(make_ctx(pool))
    rows = conn.execute(
        "SELECT details->>'threshold_days' FROM leasectl_certs.audit_events"
        " WHERE action = 'expiration_alert_skipped_no_channels' AND resource_id = 'multi'"
    ).fetchall()
    assert rows == [("0",)]  # the critical tier maps to [] in policy "multi"
    channels = conn.execute(
        "SELECT threshold_days, channel FROM leasectl_certs.notification_events"
        " WHERE certificate_id = 'multi' ORDER BY 1, 2"
    ).fetchall()
    assert channels == [(7, "Email"), (7, "Webhook"), (14, "Email"), (14, "Webhook"), (30, "Email")]


def test_completed_renewal_allows_the_next_one_later(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    seed(conn)
    renewal_check.run(make_ctx(pool))
    conn.execute("UPDATE leasectl_certs.jobs SET status = 'Completed' WHERE certificate_id = 'due'")
    # the certificate is still inside its window and back to Expiring: a new job may open
    conn.execute(
        "UPDATE leasectl_certs.managed_certificates SET status = 'Expiring' WHERE id = 'due'"
    )
    renewal_check.run(make_ctx(pool))
    assert (
        scalar(conn, "SELECT count(*) FROM leasectl_certs.jobs WHERE certificate_id = 'due'") == 2
    )
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM leasectl_certs.jobs WHERE certificate_id = 'due' AND status = "
            "'Pending'",
        )
        == 1
    )
