"""notification_send / notification_retry against a real SMTP server and HTTP receiver."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from leasectl.certs import notification_retry, notification_send
from leasectl.certs.metrics import NOTIFICATIONS
from leasectl.certs.notify.dispatch import Dispatcher, foreign_claim_after
from leasectl.certs.settings import (
    LoopsSettings,
    NotificationSettings,
    SmtpSettings,
    WebhookSettings,
)
from leasectl.errors import ConfigError, FencingRejected, LeaseLost, TickCancelled
from leasectl.lease_manager import LeaseManager
from leasectl.leases import Lease
from leasectl.limits import RateLimiter
from leasectl.loop import TickContext
from leasectl.settings import CoreSettings, LimitSettings
from tests.integration.leased_helpers import (
    Inbox,
    Receiver,
    leased,
    one_connection_pool,
    pool_for,
    smtp_server,
    terminate_backends,
    tick,
    tls_files,
)

HMAC_KEY = "test-hmac-key"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_server() as server:
        yield server


def settings(**kw: Any) -> LoopsSettings:
    # The receivers listen on 127.0.0.1, which the SSRF guard refuses unless it is listed.
    kw.setdefault("allow_private_networks", ("127.0.0.0/8",))
    return LoopsSettings(notifications=NotificationSettings(**kw))


def seed_cert(conn: psycopg.Connection[Any], cid: str = "c1", days: float = 10.5) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, status, "
        "expires_at) "
        "VALUES (%s, %s, %s, 'Active', now() + make_interval(secs => %s))",
        (cid, f"cert-{cid}", f"{cid}.example.com", days * 86400),
    )


def queue(
    conn: psycopg.Connection[Any],
    nid: str,
    channel: str,
    recipient: str,
    *,
    type_: str = "ExpirationWarning",
    cert: str | None = "c1",
    threshold: int | None = 14,
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.notification_events (id, type, certificate_id, channel, "
        "recipient, "
        "threshold_days) VALUES (%s, %s, %s, %s, %s, %s)",
        (nid, type_, cert, channel, recipient, threshold),
    )


def row(conn: psycopg.Connection[Any], nid: str) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    r = cur.execute(
        "SELECT *, extract(epoch FROM next_retry_at - now())::float AS due_in "
        "FROM leasectl_certs.notification_events WHERE id = %s",
        (nid,),
    ).fetchone()
    assert r is not None
    return r


def test_email_plain_delivery(dsn: str, conn: psycopg.Connection[Any], smtp: Any) -> None:
    inbox, port = smtp
    seed_cert(conn)
    queue(conn, "n-email-1", "Email", "ops@example.com")
    before = NOTIFICATIONS.labels("Email", "sent")._value.get()
    spec = notification_send.build(
        settings(smtp=SmtpSettings(host="127.0.0.1", port=port, tls="none"))
    )
    assert spec is not None and spec.placement == "leased"
    with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
        ctx = tick(spec, pool, lease)
    assert ctx.stats == {"sent": 1}
    [msg] = inbox.messages
    assert msg["To"] == "ops@example.com"
    assert msg["Subject"] == "[leasectl] ExpirationWarning: c1.example.com"
    assert msg["Message-ID"] == "<n-email-1@leasectl>"
    body = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "The certificate for c1.example.com will expire in 10 days" in body
    r = row(conn, "n-email-1")
    assert r["status"] == "sent" and r["claimed_epoch"] == lease.epoch
    assert r["claimed_lease"] == "notification_send" and r["sent_at"] is not None
    assert NOTIFICATIONS.labels("Email", "sent")._value.get() == before + 1


def test_email_starttls_with_plain_auth(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    ca_file, cert_file, key_file = tls_files(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((mechanism, data.login.decode()))
        return AuthResult(success=data.password == b"pw")

    with smtp_server(
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    ) as (inbox, port):
        seed_cert(conn)
        queue(conn, "n-tls", "Email", "ops@example.com")
        # Header injection through the recipient: refused, dead at once, nothing sent.
        queue(conn, "n-inject", "Email", "ops@example.com\r\nBcc: evil@example.com", threshold=7)
        smtp_settings = SmtpSettings(
            host="127.0.0.1",
            port=port,
            tls="starttls",
            username="leasectl",
            password="pw",
            ca_file=str(ca_file),
        )
        spec = notification_send.build(settings(smtp=smtp_settings))
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            ctx = tick(spec, pool, lease)
    assert ctx.stats == {"sent": 1, "dead": 1}
    assert logins == [("PLAIN", "leasectl")]
    assert [m["Message-ID"] for m in inbox.messages] == ["<n-tls@leasectl>"]
    dead = row(conn, "n-inject")
    assert dead["status"] == "dead" and "CR, LF or NUL" in dead["last_error"]
    assert dead["next_retry_at"] is None


def test_webhook_signed_with_idempotency_key_and_epoch(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed_cert(conn)
    queue(conn, "n-hook", "Webhook", "team-a")
    with Receiver(HMAC_KEY) as rx:
        spec = notification_send.build(
            settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY))
        )
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send", "replica-x") as (_, lease):
            tick(spec, pool, lease, replica="replica-x")
    [got] = rx.received
    assert got.signature_ok
    assert (got.key, got.epoch, got.replica) == ("n-hook", lease.epoch, "replica-x")
    assert got.body["id"] == "n-hook" and got.body["certificate_id"] == "c1"
    assert "will expire in" in got.body["text"]
    assert row(conn, "n-hook")["status"] == "sent"


def test_failure_schedules_retry_with_backoff_then_dead(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed_cert(conn)
    queue(conn, "n-500", "Webhook", "team-a")
    with Receiver(HMAC_KEY, status=lambda r: 500) as rx:
        cfg = settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY))
        send = notification_send.build(cfg)
        retry = notification_retry.build(cfg)
        assert send is not None and retry is not None
        with (
            pool_for(dsn) as pool,
            leased(dsn, "notification_send") as (_, send_lease),
            leased(dsn, "notification_retry") as (_, retry_lease),
        ):
            tick(send, pool, send_lease)
            r = row(conn, "n-500")
            # certctl defect #5: the first failure left next_retry_at NULL. Here: +1 min.
            assert (r["status"], r["retry_count"]) == ("failed", 1)
            assert 50 < r["due_in"] <= 60
            assert "HTTP 500" in r["last_error"]
            # Not due yet: the retry loop leaves it alone.
            tick(retry, pool, retry_lease)
            assert len(rx.received) == 1
            waits = []
            for attempt in (2, 3, 4, 5):
                # Drive time through the database instead of sleeping.
                conn.execute(
                    "UPDATE leasectl_certs.notification_events SET next_retry_at = now() - "
                    "interval '1 second' "
                    "WHERE id = 'n-500'"
                )
                tick(retry, pool, retry_lease)
                r = row(conn, "n-500")
                assert r["retry_count"] == attempt
                waits.append(r["due_in"])
    assert len(rx.received) == 5
    assert {x.key for x in rx.received} == {"n-500"}
    # Waits after failed attempts 2, 3, 4 are 2, 4 and 8 minutes; the fifth failure is final.
    assert [round(w / 60) for w in waits[:3]] == [2, 4, 8]
    assert waits[3] is None
    assert r["status"] == "dead" and r["next_retry_at"] is None
    assert "HTTP 500" in r["last_error"]


def test_unconfigured_channel_is_dead_not_fake_sent(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # certctl defect #6 marked every Webhook row 'sent' without delivering it.
    seed_cert(conn)
    queue(conn, "n-nourl", "Webhook", "team-a")
    spec = notification_send.build(settings())
    assert spec is not None
    with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
        tick(spec, pool, lease)
    r = row(conn, "n-nourl")
    assert r["status"] == "dead" and "no webhook URL configured" in r["last_error"]


def test_redelivery_after_handover_uses_the_same_idempotency_key(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """Replica A delivers, then loses its lease before it can mark the row sent.

    B takes over with a higher epoch and re-delivers the row A left 'sending', with the same
    Idempotency-Key; A's late mark is fenced off.
    """
    seed_cert(conn)
    queue(conn, "n-handover", "Webhook", "team-a")
    a = LeaseManager("replica-a", ["notification_send"], CoreSettings(), dsn=dsn)
    b = LeaseManager("replica-b", ["notification_send"], CoreSettings(), dsn=dsn)
    a.start()
    lease_a = a.wait_for("notification_send", 10)
    b.start()

    def respond(rec: Any) -> int:
        if rec.replica == "replica-a":
            a.stop()  # A's lease is released while its delivery is in flight
        return 200

    with Receiver(HMAC_KEY, status=respond) as rx, pool_for(dsn) as pool:
        spec = notification_send.build(
            settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY))
        )
        assert spec is not None
        try:
            with pytest.raises(LeaseLost):
                tick(spec, pool, lease_a, replica="replica-a")
            r = row(conn, "n-handover")
            assert (r["status"], r["claimed_epoch"]) == ("sending", lease_a.epoch)
            lease_b = b.wait_for("notification_send", 10)
            assert lease_b.epoch > lease_a.epoch
            tick(spec, pool, lease_b, replica="replica-b")
        finally:
            b.stop()
            a.stop()
    assert [(x.key, x.replica, x.epoch) for x in rx.received] == [
        ("n-handover", "replica-a", lease_a.epoch),
        ("n-handover", "replica-b", lease_b.epoch),
    ]
    assert rx.received[0].body == rx.received[1].body  # byte-identical body, same signature
    r = row(conn, "n-handover")
    assert (r["status"], r["claimed_epoch"], r["claimed_by"]) == (
        "sent",
        lease_b.epoch,
        "replica-b",
    )


def test_broken_template_fails_build(tmp_path: Path) -> None:
    import leasectl.certs

    packaged = Path(leasectl.certs.__file__).parent / "templates"
    shutil.copytree(packaged, tmp_path / "t")
    (tmp_path / "t" / "notify_expiration_warning.txt.j2").write_text("{% if cert %}unclosed")
    with pytest.raises(ConfigError, match="notify_expiration_warning.txt.j2, line 1"):
        notification_send.build(settings(templates_dir=str(tmp_path / "t")))
    with pytest.raises(ConfigError, match="hmac_key is required"):
        notification_retry.build(settings(webhook=WebhookSettings(url="https://h.example/x")))
    with pytest.raises(ConfigError, match="smtp.tls"):
        notification_send.build(settings(smtp=SmtpSettings(host="h", tls="ssl")))
    disabled = dataclasses.replace(
        NotificationSettings(), send=dataclasses.replace(NotificationSettings().send, enabled=False)
    )
    assert notification_send.build(LoopsSettings(notifications=disabled)) is None


def test_email_implicit_tls_and_untrusted_server_refused(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    ca_file, cert_file, key_file = tls_files(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    seed_cert(conn)
    queue(conn, "n-implicit", "Email", "ops@example.com")
    with smtp_server(ssl_context=server_ctx) as (inbox, port):
        trusted = SmtpSettings(host="127.0.0.1", port=port, tls="implicit", ca_file=str(ca_file))
        untrusted = dataclasses.replace(trusted, ca_file="")  # system CAs: our test CA is unknown
        send = notification_send.build(settings(smtp=untrusted))
        retry = notification_retry.build(settings(smtp=trusted))
        assert send is not None and retry is not None
        with (
            pool_for(dsn) as pool,
            leased(dsn, "notification_send") as (_, send_lease),
            leased(dsn, "notification_retry") as (_, retry_lease),
        ):
            assert tick(send, pool, send_lease).stats == {"failed": 1}
            assert "CERTIFICATE_VERIFY_FAILED" in row(conn, "n-implicit")["last_error"]
            conn.execute(
                "UPDATE leasectl_certs.notification_events SET next_retry_at = now() WHERE id = "
                "'n-implicit'"
            )
            assert tick(retry, pool, retry_lease).stats == {"sent": 1}
    assert [m["Message-ID"] for m in inbox.messages] == ["<n-implicit@leasectl>"]
    r = row(conn, "n-implicit")
    assert (r["status"], r["retry_count"], r["last_error"]) == ("sent", 1, None)


def test_superseded_holder_cannot_claim(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """A paused replica that still believes in an old epoch claims and sends nothing."""
    seed_cert(conn)
    queue(conn, "n-zombie", "Webhook", "team-a")
    with Receiver(HMAC_KEY) as rx, pool_for(dsn) as pool:
        spec = notification_send.build(
            settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY))
        )
        assert spec is not None
        with leased(dsn, "notification_send") as (_, old):
            pass  # released: the next holder bumps the epoch
        with leased(dsn, "notification_send", "replica-b") as (_, current):
            zombie = Lease("notification_send", old.epoch, time.monotonic() + 60, time.monotonic)
            with pytest.raises(FencingRejected):
                tick(spec, pool, zombie)
            assert row(conn, "n-zombie")["status"] == "pending"
            tick(spec, pool, current, replica="replica-b")
    assert [(x.key, x.epoch) for x in rx.received] == [("n-zombie", current.epoch)]


def test_rate_limited_deliveries_are_deferred_not_failed(
    dsn: str, conn: psycopg.Connection[Any], smtp: Any
) -> None:
    """The cluster-wide ``smtp`` limit lets one mail per minute through: the second one is
    handed back untouched (no attempt counted, no error) and goes out once the bucket refills."""
    inbox, port = smtp
    seed_cert(conn)
    queue(conn, "n-rl-1", "Email", "a@example.com")
    queue(conn, "n-rl-2", "Email", "b@example.com", threshold=7)
    spec = notification_send.build(
        settings(smtp=SmtpSettings(host="127.0.0.1", port=port, tls="none"))
    )
    assert spec is not None
    limits = {"smtp": LimitSettings(rate=1, per=60, burst=1)}
    with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
        limiter = RateLimiter(pool, limits)
        ctx = tick(spec, pool, lease, limiter=limiter)
        assert ctx.stats == {"sent": 1, "throttled": 1}
        assert len(inbox.messages) == 1
        sent, deferred = sorted(
            (row(conn, n) for n in ("n-rl-1", "n-rl-2")), key=lambda r: r["status"] != "sent"
        )
        assert sent["status"] == "sent"
        assert deferred["status"] == "pending" and deferred["retry_count"] == 0
        assert deferred["last_error"] is None
        # The bucket refills (simulated by moving its arrival time back a minute).
        conn.execute("UPDATE leasectl_rate_limits SET tat = tat - interval '61 seconds'")
        ctx = tick(spec, pool, lease, limiter=limiter)
        assert ctx.stats == {"sent": 1}
    assert len(inbox.messages) == 2
    assert {m["To"] for m in inbox.messages} == {"a@example.com", "b@example.com"}


# -- a tick whose work connection dies between the claim and the call (issue 23) -------------


def _kill_after_claim(
    monkeypatch: pytest.MonkeyPatch, conn: psycopg.Connection[Any], app_name: str, *, stop: bool
) -> list[int]:
    """Make the next claim terminate the tick's work connection right after it commits.

    ``stop``: the tick is also told to stop then (a shutdown at that instant), so it hands
    back instead of calling out, and the hand-back runs on the dead connection. Returns a list
    that gets one entry per claim that fired.
    """
    fired: list[int] = []
    claim = Dispatcher._claim

    def claim_then_kill(self: Dispatcher, ctx: TickContext) -> list[dict[str, Any]]:
        rows = claim(self, ctx)
        if not fired:
            fired.append(terminate_backends(conn, app_name))
            if stop:
                ctx.stop.set()
        return rows

    monkeypatch.setattr(Dispatcher, "_claim", claim_then_kill)
    return fired


@pytest.mark.parametrize("mode", ["send", "retry"])
def test_claim_of_a_dead_tick_goes_out_at_the_next_tick_once(
    dsn: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The work connection is terminated between the claim and the call, and the tick ends
    without calling out or handing the row back (its hand-back ran on the dead connection).
    The row is left 'sending' under the current epoch; the very next tick of the same holder
    delivers it, once, with its idempotency key - not stale_claim_after (300 s) later."""
    seed_cert(conn)
    queue(conn, "n-orphan", "Webhook", "team-a")
    if mode == "retry":  # a failed row whose retry is due
        conn.execute(
            "UPDATE leasectl_certs.notification_events SET status = 'failed', retry_count = 1, "
            "next_retry_at = now() - interval '1 second' WHERE id = 'n-orphan'"
        )
    app_name = f"i23-work-{mode}"
    fired = _kill_after_claim(monkeypatch, conn, app_name, stop=True)
    loop = f"notification_{mode}"
    with Receiver(HMAC_KEY) as rx:
        build = notification_send.build if mode == "send" else notification_retry.build
        spec = build(settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY)))
        assert spec is not None
        with one_connection_pool(dsn, app_name) as pool, leased(dsn, loop) as (_, lease):
            with pytest.raises(TickCancelled):
                tick(spec, pool, lease)
            assert fired == [1]  # exactly the one work backend was terminated
            assert rx.received == []  # the dead tick never called out
            r = row(conn, "n-orphan")
            assert (r["status"], r["claimed_epoch"], r["claimed_lease"]) == (
                "sending",
                lease.epoch,
                loop,
            )
            ctx = tick(spec, pool, lease)  # same holder, same epoch, the next tick
            assert ctx.stats == {"sent": 1}
    assert [(x.key, x.epoch, x.body["id"]) for x in rx.received] == [
        ("n-orphan", lease.epoch, "n-orphan")
    ]
    r = row(conn, "n-orphan")
    assert (r["status"], r["claimed_epoch"]) == ("sent", lease.epoch)
    assert r["retry_count"] == (0 if mode == "send" else 1)  # the dead tick's claim is no attempt


def test_delivery_a_dead_tick_could_not_mark_is_redelivered_with_the_same_key(
    dsn: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work connection is terminated between the claim and the call, the call goes out and
    the mark fails: the next tick of the same epoch delivers again with the same key and the
    byte-identical body (receivers dedup on it), and marks the row sent."""
    seed_cert(conn)
    queue(conn, "n-unmarked", "Webhook", "team-a")
    app_name = "i23-work-unmarked"
    fired = _kill_after_claim(monkeypatch, conn, app_name, stop=False)
    with Receiver(HMAC_KEY) as rx:
        spec = notification_send.build(
            settings(webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY))
        )
        assert spec is not None
        with (
            one_connection_pool(dsn, app_name) as pool,
            leased(dsn, "notification_send") as (_, lease),
        ):
            with pytest.raises(psycopg.OperationalError):
                tick(spec, pool, lease)  # the mark runs on the terminated connection
            assert fired == [1] and len(rx.received) == 1
            assert row(conn, "n-unmarked")["status"] == "sending"
            assert tick(spec, pool, lease).stats == {"sent": 1}
    assert [(x.key, x.epoch) for x in rx.received] == [("n-unmarked", lease.epoch)] * 2
    assert rx.received[0].body == rx.received[1].body
    assert row(conn, "n-unmarked")["status"] == "sent"


def test_a_claim_left_by_the_other_notification_loop_waits_for_stale_claim_after(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """What stale_claim_after is still for: a row left 'sending' under the other loop's lease
    (notification_retry, maybe disabled now) is not taken while young - that loop's tick may
    be calling out right now - and is taken by notification_send once older than the bound,
    which is never less than either loop's tick timeout."""
    seed_cert(conn)
    queue(conn, "n-foreign", "Webhook", "team-a")
    conn.execute(
        "UPDATE leasectl_certs.notification_events SET status = 'sending', claimed_lease = "
        "'notification_retry', "
        "claimed_epoch = 1, claimed_by = 'replica-gone', claimed_at = now() - interval '100 s' "
        "WHERE id = 'n-foreign'"
    )
    cfg = settings(stale_claim_after=30.0)  # below the retry loop's 120 s tick timeout
    assert foreign_claim_after(cfg.notifications) == 120.0
    with Receiver(HMAC_KEY) as rx:
        cfg = settings(
            stale_claim_after=30.0, webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY)
        )
        spec = notification_send.build(cfg)
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            assert tick(spec, pool, lease).stats == {}
            assert rx.received == []
            conn.execute(
                "UPDATE leasectl_certs.notification_events SET claimed_at = now() - interval "
                "'121 s' "
                "WHERE id = 'n-foreign'"
            )
            assert tick(spec, pool, lease).stats == {"sent": 1}
    assert [x.key for x in rx.received] == ["n-foreign"]
    r = row(conn, "n-foreign")
    assert (r["status"], r["claimed_lease"]) == ("sent", "notification_send")
