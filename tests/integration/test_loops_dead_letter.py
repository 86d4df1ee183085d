"""certctl defect 5, fully: a dead expiry alert blocks neither the next threshold nor a requeue."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from leasectl.certs import notification_send, renewal_check
from leasectl.certs.notify.requeue import requeue
from leasectl.certs.settings import (
    LoopsSettings,
    NotificationSettings,
    RenewalSettings,
    WebhookSettings,
)
from tests.integration.everywhere_helpers import add_certificate, make_ctx, pool
from tests.integration.leased_helpers import Receiver, leased, tick

__all__ = ["pool"]

HMAC_KEY = "dl-hmac"


def alerts(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    rows = conn.execute(
        "SELECT threshold_days, id, status FROM leasectl_certs.notification_events "
        "WHERE type = 'ExpirationWarning' AND certificate_id = 'c-dl'"
    ).fetchall()
    return {t: (i, s) for t, i, s in rows}


def test_dead_alert_does_not_block_next_threshold_or_requeue(
    dsn: str, conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.owners (id, name, email) VALUES ('o', 'O', 'o@example.test')"
    )
    add_certificate(
        conn, "c-dl", issuer_id=None, owner_id="o", expires_in=dt.timedelta(days=10, hours=12)
    )
    renewal = RenewalSettings(default_channels=("Webhook",))
    renewal_check.run(make_ctx(pool, LoopsSettings(renewal=renewal), loop="renewal_check"))
    first = alerts(conn)
    assert sorted(first) == [14, 30]

    # No webhook URL: both alerts are dead-lettered at once (a permanent error).
    broken = notification_send.build(LoopsSettings(renewal=renewal))
    assert broken is not None
    with leased(dsn, "notification_send") as (_, lease):
        assert tick(broken, pool, lease).stats == {"dead": 2}
    assert {s for _, s in alerts(conn).values()} == {"dead"}

    # The certificate crosses the 7-day threshold: its alert is queued although 14 and 30 died.
    conn.execute(
        "UPDATE leasectl_certs.managed_certificates SET expires_at = now() + interval '5 days "
        "12 hours' "
        "WHERE id = 'c-dl'"
    )
    renewal_check.run(make_ctx(pool, LoopsSettings(renewal=renewal), loop="renewal_check"))
    now = alerts(conn)
    assert sorted(now) == [7, 14, 30] and now[7][1] == "pending"
    assert now[14] == (first[14][0], "dead")  # the dead row is still the 14-day alert

    # The operator requeues the dead 14-day alert and fixes the channel: the 7-day alert and
    # the requeued one are delivered once each, the requeue with its original id as the key.
    assert requeue(conn, [first[14][0], "no-such-id", now[7][0]]) == [first[14][0]]
    with Receiver(HMAC_KEY) as rx:
        fixed = notification_send.build(
            LoopsSettings(
                renewal=renewal,
                notifications=NotificationSettings(
                    webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY),
                    allow_private_networks=("127.0.0.0/8",),
                ),
            )
        )
        assert fixed is not None
        with leased(dsn, "notification_send") as (_, lease):
            assert tick(fixed, pool, lease).stats == {"sent": 2}
            assert tick(fixed, pool, lease).stats == {}
    assert sorted(x.key for x in rx.received) == sorted([first[14][0], now[7][0]])
    final = alerts(conn)
    assert final[14][1] == final[7][1] == "sent" and final[30][1] == "dead"
    r = conn.execute(
        "SELECT retry_count, last_error FROM leasectl_certs.notification_events WHERE id = %s",
        (first[14][0],),
    ).fetchone()
    assert r == (0, None)

    # A later renewal_check tick queues nothing again: one alert per threshold and channel.
    renewal_check.run(make_ctx(pool, LoopsSettings(renewal=renewal), loop="renewal_check"))
    assert sorted(alerts(conn)) == [7, 14, 30]
