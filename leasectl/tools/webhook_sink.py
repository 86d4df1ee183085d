"""The one signed-webhook receiver of the demo and the drill.

It records every delivery the leased loops make: the side effect the drill checks for
duplicates and the demo counts on screen. Each delivery is recorded with its
``Idempotency-Key`` (the notification id), ``X-Leasectl-Epoch``, ``X-Leasectl-Replica``,
arrival time (``time.time()``) and whether ``X-Leasectl-Signature`` verified (with
:mod:`loops.notify.signing`, the sender's own code). It listens on the given addresses (the
drill adds the host end of every drill veth), on one port, and nowhere else.

``bind()`` and ``start()`` are separate so a tool can bind (and learn the URL) before it
forks replicas and start the serving threads after: ``preexec_fn`` is only safe while the
parent has no other threads.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leasectl.certs.notify.signing import HEADER, verify

_MAX_BODY = 1 << 20
_PAYLOADS = {200: b'{"ok": true}', 400: b'{"error": "no key"}', 401: b'{"error": "bad signature"}'}


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


@dataclass
class Inbox:
    """What a sink received, for the demo's counters: per-key counts, last few, bad ones."""

    keys: Counter[str] = field(default_factory=Counter)
    last: list[str] = field(default_factory=list)
    bad: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, summary: str) -> None:
        with self.lock:
            self.keys[key] += 1
            self.last = (self.last + [summary])[-5:]

    def add_bad(self) -> None:
        with self.lock:
            self.bad += 1

    @property
    def received(self) -> int:
        return sum(self.keys.values())

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.keys.values() if n > 1)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class WebhookSink:
    """An ``http.server`` on daemon threads; :meth:`deliveries` is a snapshot.

    With ``reject_unverified`` (the demo) a bad signature gets 401, as a real receiver would
    answer; without it (the drill) it gets 200 and is recorded as not verified, so the
    invariants can report it.
    """

    def __init__(
        self,
        hmac_key: bytes,
        addresses: Sequence[str] = ("127.0.0.1",),
        *,
        reject_unverified: bool = False,
    ) -> None:
        self.hmac_key = hmac_key
        self.addresses = list(addresses)
        self.reject_unverified = reject_unverified
        self.port = 0
        self.inbox = Inbox()
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    def bind(self) -> int:
        """Listen on every address (not yet serving); returns the port."""
        if not self._servers:
            handler = self._handler_class()
            for addr in self.addresses:
                server = ThreadingHTTPServer((addr, self.port), handler)
                server.daemon_threads = True
                self.port = int(server.server_address[1])
                self._servers.append(server)
        return self.port

    def start(self) -> int:
        """Bind if needed and serve; returns the port."""
        self.bind()
        for server in self._servers[len(self._threads) :]:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self.port

    def url(self, address: str = "127.0.0.1") -> str:
        return f"http://{address}:{self.port}/hook"

    def stop(self) -> None:
        for server in self._servers[: len(self._threads)]:
            server.shutdown()  # waits for serve_forever, so only for started servers
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(5.0)
        self._servers.clear()
        self._threads.clear()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)
        if not delivery.verified:
            self.inbox.add_bad()
        elif delivery.key:
            self.inbox.add(delivery.key, f"from {delivery.replica} (epoch {delivery.epoch})")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                at = time.time()
                length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("Idempotency-Key") or ""
                verified = verify(sink.hmac_key, body, self.headers.get(HEADER))
                status = 200 if key else 400
                if sink.reject_unverified and not verified:
                    status = 401
                sink.record(
                    Delivery(
                        key=key,
                        epoch=_int_or_none(self.headers.get("X-Leasectl-Epoch")),
                        replica=self.headers.get("X-Leasectl-Replica"),
                        at=at,
                        verified=verified,
                        status=status,
                    )
                )
                payload = _PAYLOADS[status]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
