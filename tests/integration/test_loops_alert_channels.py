"""Slack, Teams, PagerDuty and OpsGenie delivered to a real local HTTP receiver, payloads checked.

The receiver is an ``http.server`` in a thread. It records each request's path, headers and
JSON body; the assertions check the fields each service documents as required, and that the
service's dedup field (PagerDuty ``dedup_key``, OpsGenie ``alias``) is the notification id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from leasectl.certs import notification_retry, notification_send
from leasectl.certs.settings import (
    LoopsSettings,
    NotificationSettings,
    OpsGenieSettings,
    PagerDutySettings,
    SlackSettings,
    TeamsSettings,
)
from leasectl.errors import ConfigError
from tests.integration.leased_helpers import leased, pool_for, tick
from tests.integration.test_loops_notifications import queue, row, seed_cert

LOCAL = ("127.0.0.0/8",)
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"
GENIE_KEY = "genie-3f1c-secret"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class JsonReceiver:
    """Records every POST; answers ``status(request)`` (default 202)."""

    status: Callable[[Request], int] = lambda r: 202
    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def on(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


@contextmanager
def receiver(status: Callable[[Request], int] = lambda r: 202) -> Iterator[JsonReceiver]:
    rx = JsonReceiver(status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, {})
            try:
                req.body = json.loads(raw)
            except ValueError:
                req.body = {"_unparsed": raw.decode("utf-8", "replace")}
            rx.requests.append(req)
            code = rx.status(req)
            reply = b'{"status":"success"}' if code < 300 else b'{"message":"nope"}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    rx.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=rx.server.serve_forever, daemon=True).start()
    try:
        yield rx
    finally:
        rx.server.shutdown()
        rx.server.server_close()


def channel_settings(base: str, **kw: Any) -> LoopsSettings:
    ns = NotificationSettings(
        slack=SlackSettings(webhook_url=f"{base}/services/T000/B000/slacksecret"),
        teams=TeamsSettings(webhook_url=f"{base}/webhookb2/teamssecret"),
        pagerduty=PagerDutySettings(url=f"{base}/v2/enqueue", routing_key=ROUTING_KEY),
        opsgenie=OpsGenieSettings(url=f"{base}/v2/alerts", api_key=GENIE_KEY),
        allow_private_networks=kw.pop("allow", LOCAL),
        **kw,
    )
    return LoopsSettings(notifications=ns)


def queue_all(conn: psycopg.Connection[Any]) -> None:
    seed_cert(conn)
    conn.execute(
        "INSERT INTO leasectl_certs.notification_events (id, type, certificate_id, channel, "
        "recipient, "
        "threshold_days, payload) VALUES "
        "('n-slack', 'ExpirationWarning', 'c1', 'Slack', 'ops', 14, '{\"severity\":\"warning\"}'),"
        "('n-teams', 'ExpirationWarning', 'c1', 'Teams', 'ops', 14, '{\"severity\":\"warning\"}'),"
        "('n-pd', 'ExpirationWarning', 'c1', 'PagerDuty', 'ops', 0, '{\"severity\":\"critical\"}'),"
        "('n-og', 'ExpirationWarning', 'c1', 'OpsGenie', 'ops', 7, '{\"severity\":\"warning\"}')"
    )


def test_each_channel_delivers_its_documented_payload_once(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    queue_all(conn)
    with receiver() as rx:
        cfg = channel_settings(rx.base)
        send = notification_send.build(cfg)
        assert send is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            ctx = tick(send, pool, lease)
            # A second tick finds nothing to send: no duplicate delivery.
            again = tick(send, pool, lease)
    assert ctx.stats == {"sent": 4}
    assert again.stats == {}
    assert len(rx.requests) == 4

    [slack] = rx.on("/services/T000/B000/slacksecret")
    assert slack.headers["content-type"] == "application/json"
    assert slack.body["text"].startswith("*[leasectl] ExpirationWarning: c1.example.com*\n")
    kinds = [b["type"] for b in slack.body["blocks"]]
    assert kinds == ["header", "section", "context"]
    assert slack.body["blocks"][1]["text"]["type"] == "mrkdwn"
    assert "n-slack" in slack.body["blocks"][2]["elements"][0]["text"]

    [teams] = rx.on("/webhookb2/teamssecret")
    assert teams.body["type"] == "message"
    [attachment] = teams.body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"]
    assert card["body"][0]["text"] == "[leasectl] ExpirationWarning: c1.example.com"
    assert {"title": "Notification", "value": "n-teams"} in card["body"][2]["facts"]

    [pd] = rx.on("/v2/enqueue")
    assert pd.body["routing_key"] == ROUTING_KEY
    assert pd.body["event_action"] == "trigger"
    assert pd.body["dedup_key"] == "n-pd"  # certctl defect 6: it sent none
    payload = pd.body["payload"]
    assert payload["summary"] == "[leasectl] ExpirationWarning: c1.example.com"
    assert payload["source"] == "leasectl"
    assert payload["severity"] == "critical"
    assert payload["custom_details"]["certificate_id"] == "c1"
    assert "will expire in" in payload["custom_details"]["text"]

    [og] = rx.on("/v2/alerts")
    assert og.headers["authorization"] == f"GenieKey {GENIE_KEY}"
    assert og.body["alias"] == "n-og"  # certctl defect 6: it sent none
    assert og.body["message"] == "[leasectl] ExpirationWarning: c1.example.com"
    assert len(og.body["message"]) <= 130
    assert og.body["priority"] == "P3"
    assert "will expire in" in og.body["description"]
    assert og.body["tags"] == ["leasectl"]
    assert all(isinstance(v, str) for v in og.body["details"].values())

    for nid in ("n-slack", "n-teams", "n-pd", "n-og"):
        r = row(conn, nid)
        assert r["status"] == "sent", (nid, r["last_error"])


def test_redelivery_after_a_lost_mark_carries_the_same_dedup_key(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """A holder that delivered but could not mark leaves the row 'sending'; the next epoch
    re-delivers it with the same dedup_key/alias and a byte-identical body."""
    queue_all(conn)
    conn.execute(
        "DELETE FROM leasectl_certs.notification_events WHERE channel IN ('Slack', 'Teams')"
    )
    with receiver() as rx:
        send = notification_send.build(channel_settings(rx.base))
        assert send is not None
        with pool_for(dsn) as pool:
            with leased(dsn, "notification_send") as (_, first):
                tick(send, pool, first)
            # Pretend the first holder's marks were lost: the rows are still its claims.
            conn.execute(
                "UPDATE leasectl_certs.notification_events SET status = 'sending', "
                "claimed_epoch = %s, "
                "claimed_lease = 'notification_send'",
                (first.epoch,),
            )
            with leased(dsn, "notification_send", "replica-b") as (_, second):
                assert second.epoch > first.epoch
                tick(send, pool, second, replica="replica-b")
    pd = rx.on("/v2/enqueue")
    og = rx.on("/v2/alerts")
    assert [r.body["dedup_key"] for r in pd] == ["n-pd", "n-pd"]
    assert [r.body["alias"] for r in og] == ["n-og", "n-og"]
    assert pd[0].body == pd[1].body and og[0].body == og[1].body


def test_teams_legacy_messagecard(dsn: str, conn: psycopg.Connection[Any]) -> None:
    seed_cert(conn)
    queue(conn, "n-card", "Teams", "ops")
    with receiver(lambda r: 200) as rx:
        cfg = channel_settings(rx.base)
        ns = cfg.notifications
        cfg = LoopsSettings(
            notifications=NotificationSettings(
                teams=TeamsSettings(webhook_url=ns.teams.webhook_url, card="messagecard"),
                allow_private_networks=LOCAL,
            )
        )
        send = notification_send.build(cfg)
        assert send is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            assert tick(send, pool, lease).stats == {"sent": 1}
    [card] = rx.requests
    assert card.body["@type"] == "MessageCard"
    assert card.body["@context"] == "https://schema.org/extensions"
    assert card.body["summary"] and "will expire in" in card.body["text"]


def test_rejections_are_permanent_and_secrets_stay_out_of_errors(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """A 4xx from the service (bad key, deleted webhook) dead-letters the row at once; a 5xx
    is retried. The stored error names the service and status, never the URL path or keys."""
    queue_all(conn)

    def answer(req: Request) -> int:
        return 503 if req.path == "/v2/alerts" else 404 if "secret" in req.path else 400

    with receiver(answer) as rx:
        send = notification_send.build(channel_settings(rx.base))
        assert send is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            ctx = tick(send, pool, lease)
    assert ctx.stats == {"dead": 3, "failed": 1}
    errors = {nid: row(conn, nid)["last_error"] for nid in ("n-slack", "n-teams", "n-pd", "n-og")}
    assert "Slack POST http://127.0.0.1:" in errors["n-slack"]
    assert "/<redacted> returned HTTP 404" in errors["n-slack"]
    assert "HTTP 400" in errors["n-pd"] and "HTTP 503" in errors["n-og"]
    assert row(conn, "n-og")["status"] == "failed"
    for text in errors.values():
        for secret in ("slacksecret", "teamssecret", ROUTING_KEY, GENIE_KEY):
            assert secret not in text


def test_unconfigured_channel_is_dead_with_a_named_error(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed_cert(conn)
    queue(conn, "n-nopd", "PagerDuty", "ops")
    send = notification_send.build(LoopsSettings())
    assert send is not None
    with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
        tick(send, pool, lease)
    r = row(conn, "n-nopd")
    assert r["status"] == "dead"
    assert "PagerDuty channel is not configured" in r["last_error"]


def test_channel_settings_are_checked_at_build() -> None:
    with pytest.raises(ConfigError, match="teams.card"):
        notification_retry.build(
            LoopsSettings(notifications=NotificationSettings(teams=TeamsSettings(card="hero")))
        )
    with pytest.raises(ConfigError, match="allow_private_networks"):
        notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(allow_private_networks=("10.0.0.0/33",))
            )
        )
    with pytest.raises(ConfigError, match="slack.webhook_url must be an http"):
        notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    slack=SlackSettings(webhook_url="ftp://hooks.example/secret-path")
                )
            )
        )
