"""The drill's webhook receiver: records every delivery the leased loops make.

It is the side effect the drill watches for duplicates. Each delivery is recorded with its
``Idempotency-Key`` (the notification id), ``X-Leasectl-Epoch``, ``X-Leasectl-Replica``,
arrival time (``time.time()``) and whether ``X-Leasectl-Signature`` (``sha256=<hex>``, an
HMAC-SHA256 of the body) verified. It listens on 127.0.0.1 and on the host end of every
drill veth, on the same port, and nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Delivery:
    """One webhook request as the receiver saw it."""

    key: str
    epoch: int | None
    replica: str | None
    at: float
    verified: bool
    status: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sign(key: bytes, body: bytes) -> str:
    """The signature header value a sender must put on ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(key, body), header.strip())


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class WebhookSink:
    """An ``http.server`` on daemon threads; :meth:`deliveries` is a snapshot."""

    def __init__(self, hmac_key: bytes, addresses: Sequence[str] = ("127.0.0.1",)) -> None:
        self.hmac_key = hmac_key
        self.addresses = list(addresses)
        self.port = 0
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> int:
        handler = self._handler_class()
        for addr in self.addresses:
            server = ThreadingHTTPServer((addr, self.port), handler)
            server.daemon_threads = True
            self.port = int(server.server_address[1])
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self.port

    def url(self, address: str = "127.0.0.1") -> str:
        return f"http://{address}:{self.port}/hook"

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5.0)
        self._servers.clear()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                at = time.time()
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("Idempotency-Key") or ""
                status = 200 if key else 400
                sink.record(
                    Delivery(
                        key=key,
                        epoch=_int_or_none(self.headers.get("X-Leasectl-Epoch")),
                        replica=self.headers.get("X-Leasectl-Replica"),
                        at=at,
                        verified=verify(
                            sink.hmac_key, body, self.headers.get("X-Leasectl-Signature")
                        ),
                        status=status,
                    )
                )
                payload = b'{"ok": true}' if status == 200 else b'{"error": "no key"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
