"""The drill's webhook receiver: records key, epoch, replica and whether the HMAC verified."""

from __future__ import annotations

import http.client

from leasectl.certs.notify.signing import sign, verify
from leasectl.tools.webhook_sink import WebhookSink


def post(port: int, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/hook", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_sign_and_verify() -> None:
    assert verify(b"k", b"body", sign(b"k", b"body"))
    assert not verify(b"k", b"body", sign(b"other", b"body"))
    assert not verify(b"k", b"body", None)


def test_sink_records_deliveries() -> None:
    sink = WebhookSink(b"secret")
    port = sink.start()
    try:
        body = b'{"id": "n1"}'
        good = {
            "Idempotency-Key": "n1",
            "X-Leasectl-Epoch": "7",
            "X-Leasectl-Replica": "r1",
            "X-Leasectl-Signature": sign(b"secret", body),
        }
        assert post(port, body, good) == 200
        assert post(port, body, {**good, "X-Leasectl-Signature": "sha256=00"}) == 200
        assert post(port, body, {"X-Leasectl-Epoch": "x"}) == 400
        first, forged, nokey = sink.deliveries()
        assert (first.key, first.epoch, first.replica, first.verified) == ("n1", 7, "r1", True)
        assert not forged.verified
        assert nokey.key == "" and nokey.epoch is None and nokey.status == 400
        assert sink.url().endswith(f":{port}/hook")
    finally:
        sink.stop()
