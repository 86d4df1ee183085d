"""The demo's SMTP sink, on the standard library.

It speaks just enough SMTP for ``smtplib`` (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT;
no TLS, no AUTH), so the demo needs no extra dependency (aiosmtpd stays a test dependency).
It counts what it receives and the duplicates by Message-ID, in the same :class:`Inbox` the
shared webhook receiver (:mod:`leasectl.tools.webhook_sink`) fills by Idempotency-Key: a
delivery repeated across a failover shows up.
"""

from __future__ import annotations

import hashlib
import socketserver
import threading
from email import message_from_bytes
from email.policy import default as default_policy

from leasectl.tools.webhook_sink import Inbox


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
