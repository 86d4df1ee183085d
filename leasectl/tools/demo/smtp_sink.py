"""The demo's two receivers: an SMTP sink and a webhook endpoint, on the standard library.

Private to :mod:`leasectl.demo`. The SMTP sink speaks just enough SMTP for ``smtplib``
(EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no AUTH), so the demo needs no
extra dependency (aiosmtpd stays a test dependency). Both count what they receive and the
duplicates, by Message-ID and Idempotency-Key: a delivery repeated across a failover shows up.
"""

from __future__ import annotations

import hashlib
import hmac
import socketserver
import threading
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Inbox:
    """What a sink received (thread-safe counters)."""

    keys: Counter[str] = field(default_factory=Counter)
    last: list[str] = field(default_factory=list)
    bad: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, summary: str) -> None:
        with self.lock:
            self.keys[key] += 1
            self.last = (self.last + [summary])[-5:]

    @property
    def received(self) -> int:
        return sum(self.keys.values())

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.keys.values() if n > 1)


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: _SmtpServer

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._send("220 leasectl-demo SMTP sink")
        while True:
            raw = self.rfile.readline(65536)
            if not raw:
                return
            verb = raw.decode("utf-8", "replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._send("250-leasectl-demo")
                self._send("250-8BITMIME")
                self._send("250 SMTPUTF8")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                self._send("250 OK")
            elif verb == "DATA":
                self._send("354 end with <CRLF>.<CRLF>")
                self._data()
                self._send("250 queued")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:
                self._send("502 not implemented")

    def _data(self) -> None:
        lines: list[bytes] = []
        while True:
            line = self.rfile.readline(1 << 20)
            if not line or line in (b".\r\n", b".\n"):
                break
            lines.append(line[1:] if line.startswith(b"..") else line)
        msg = message_from_bytes(b"".join(lines), policy=default_policy)
        key = str(msg.get("Message-ID") or hashlib.sha256(b"".join(lines)).hexdigest())
        self.server.inbox.add(key, f"to {msg.get('To')}: {msg.get('Subject')}")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _SmtpHandler)
        self.inbox = Inbox()


class SmtpSink:
    """Accepts every message on ``127.0.0.1:<port>`` and counts it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _SmtpServer((host, port))
        self.port = int(self._server.server_address[1])
        self.inbox = self._server.inbox
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> SmtpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, so only if started
            self._server.shutdown()
        self._server.server_close()


class WebhookSink:
    """Receives POSTs on ``/hook``, checks the HMAC signature and counts deliveries."""

    def __init__(self, key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        inbox = self.inbox = Inbox()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                want = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
                got = self.headers.get("X-Leasectl-Signature", "")
                if not hmac.compare_digest(want, got):
                    with inbox.lock:
                        inbox.bad += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                ident = self.headers.get("Idempotency-Key") or hashlib.sha256(body).hexdigest()
                inbox.add(
                    ident,
                    f"from {self.headers.get('X-Leasectl-Replica')} "
                    f"(epoch {self.headers.get('X-Leasectl-Epoch')})",
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, so only if started
            self._server.shutdown()
        self._server.server_close()
