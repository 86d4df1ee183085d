"""The SSRF guard on webhook and chat URLs: refused by default, allowed when listed, pinned.

Real receivers on 127.0.0.1 (plain HTTP and TLS); the pure check is also driven with an
injected resolver, which is how a hostile DNS answer (metadata address, rebinding) is shown
without touching the system resolver.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from leasectl.certs import notification_send
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.outbound import (
    DestinationRefused,
    Target,
    check_addresses,
    forbidden_reason,
    parse_networks,
    post,
)
from leasectl.certs.notify.webhook import WebhookSender
from leasectl.certs.settings import (
    LoopsSettings,
    NotificationSettings,
    SlackSettings,
    WebhookSettings,
)
from tests.integration.leased_helpers import Receiver, leased, pool_for, tick, tls_files
from tests.integration.test_loops_notifications import queue, row, seed_cert

HMAC_KEY = "ssrf-hmac"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 form of 169.254.169.254
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None
    with pytest.raises(DestinationRefused, match="allow_private_networks"):
        check_addresses("hooks.example", 443, (), lambda h, p: [address])


def test_public_addresses_pass_and_listed_networks_are_allowed() -> None:
    public = lambda h, p: ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]  # noqa: E731
    assert [str(a) for a in check_addresses("example.com", 443, (), public)] == [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
    ]
    # One forbidden address among public ones is enough to refuse (a hostile DNS answer
    # could list both and hope the client picks the internal one).
    mixed = lambda h, p: ["93.184.216.34", "169.254.169.254"]  # noqa: E731
    with pytest.raises(DestinationRefused, match=r"169\.254\.169\.254 \(link-local"):
        check_addresses("evil.example", 443, (), mixed)
    allow = parse_networks(["10.0.0.0/8", "fd00::/8"], "setting")
    assert check_addresses("internal.example", 80, allow, lambda h, p: ["10.9.8.7"])
    assert check_addresses("internal.example", 80, allow, lambda h, p: ["fd00::5"])
    with pytest.raises(DestinationRefused):
        check_addresses("internal.example", 80, allow, lambda h, p: ["192.168.0.1"])
    # An IP literal is checked without asking the resolver.
    with pytest.raises(DestinationRefused, match=r"refused: 127\.0\.0\.1 \(loopback\)"):
        check_addresses("127.0.0.1", 80, (), lambda h, p: pytest.fail("resolver called"))


def test_unresolvable_name_is_a_retryable_error() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(DeliveryError) as info:
        check_addresses("nx.example", 443, (), fail)
    assert not isinstance(info.value, DestinationRefused) and not info.value.permanent


def test_webhook_to_loopback_refused_by_default_allowed_when_listed(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed_cert(conn)
    queue(conn, "n-refused", "Webhook", "team")
    with Receiver(HMAC_KEY) as rx, pool_for(dsn) as pool:
        url = rx.url
        refuse = notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    webhook=WebhookSettings(url=url, hmac_key=HMAC_KEY)
                )
            )
        )
        assert refuse is not None
        with leased(dsn, "notification_send") as (_, lease):
            assert tick(refuse, pool, lease).stats == {"dead": 1}
        r = row(conn, "n-refused")
        assert r["status"] == "dead" and r["retry_count"] == 1
        assert "webhook refused: 127.0.0.1 (loopback)" in r["last_error"]
        assert rx.received == []

        queue(conn, "n-allowed", "Webhook", "team", threshold=7)
        allow = notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    webhook=WebhookSettings(url=url, hmac_key=HMAC_KEY),
                    allow_private_networks=("127.0.0.0/8",),
                )
            )
        )
        assert allow is not None
        with leased(dsn, "notification_send") as (_, lease):
            assert tick(allow, pool, lease).stats == {"sent": 1}
    assert [x.key for x in rx.received] == ["n-allowed"]


def test_hostname_resolving_to_a_private_address_is_refused(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """``localhost`` resolves (through the system resolver) to loopback only: refused, for a
    chat channel too, and the error names the address, not the secret URL path."""
    seed_cert(conn)
    queue(conn, "n-localhost", "Slack", "team")
    with Receiver(HMAC_KEY) as rx, pool_for(dsn) as pool:
        port = rx.url.split(":")[2].split("/")[0]
        send = notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    slack=SlackSettings(webhook_url=f"http://localhost:{port}/services/T/B/sekrit")
                )
            )
        )
        assert send is not None
        with leased(dsn, "notification_send") as (_, lease):
            tick(send, pool, lease)
    r = row(conn, "n-localhost")
    assert r["status"] == "dead"
    assert "Slack refused: 'localhost' resolves to" in r["last_error"]
    assert "loopback" in r["last_error"] and "sekrit" not in r["last_error"]
    assert rx.received == []


def test_resolved_once_and_connected_to_the_checked_address() -> None:
    """DNS rebinding: the name is resolved once per delivery and the socket goes to the
    address that was checked (the Host header is checked in the TLS test below)."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        # A rebinding server would answer a second lookup differently; there is none.
        return ["127.0.0.1"] if len(calls) == 1 else ["203.0.113.9"]

    with Receiver(HMAC_KEY) as rx:
        port = rx.url.split(":")[2].split("/")[0]
        sender = WebhookSender(
            WebhookSettings(url=f"http://hooks.rebind.test:{port}/h", hmac_key=HMAC_KEY),
            parse_networks(["127.0.0.0/8"], "s"),
            resolver,
        )
        sender.post(b'{"id":"k1"}', idempotency_key="k1", epoch=1, replica="r")
    assert calls == ["hooks.rebind.test"]
    assert [x.key for x in rx.received] == ["k1"]


@contextmanager
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``localhost``/127.0.0.1 only.

    Yields (port, ca_file, Host headers received)."""
    ca_file, cert_file, key_file = tls_files(tmp_path)
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            hosts.append(self.headers["Host"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1]), ca_file, hosts
    finally:
        server.shutdown()
        server.server_close()


def test_https_to_the_pinned_address_verifies_the_original_name(tmp_path: Path) -> None:
    allow = parse_networks(["127.0.0.0/8"], "s")
    with tls_receiver(tmp_path) as (port, ca_file, hosts):
        # The certificate names localhost: connecting to 127.0.0.1 for "localhost" works,
        # with SNI and the Host header carrying the name.
        ok = post(
            Target.parse(f"https://localhost:{port}/hook", "s"),
            b"{}",
            {"Content-Type": "application/json"},
            timeout=5,
            allow=allow,
            ca_file=str(ca_file),
            resolver=lambda h, p: ["127.0.0.1"],
        )
        assert ok.status == 200 and hosts == [f"localhost:{port}"]
        # The same address under a name the certificate does not carry fails verification:
        # pinning the IP does not weaken the hostname check.
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|match"):
            post(
                Target.parse(f"https://hooks.rebind.test:{port}/hook", "s"),
                b"{}",
                {},
                timeout=5,
                allow=allow,
                ca_file=str(ca_file),
                resolver=lambda h, p: ["127.0.0.1"],
            )
    assert len(hosts) == 1
