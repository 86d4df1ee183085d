"""The daemon's small HTTP endpoint (stdlib server, one thread per request).

``/metrics``, ``/healthz``, ``/readyz``, and the read-only status page: ``/`` (HTML, see
:mod:`leasectl.status_page`) and ``/status.json`` (the same read model as ``leasectl status
--json``). Only GET; the bind address is loopback unless configured otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from leasectl.errors import ConfigError
from leasectl.metrics import REGISTRY

Check = Callable[[], tuple[bool, str]]
#: A page: (HTTP status, body, content type).
Page = Callable[[], tuple[int, bytes, str]]


class HttpEndpoint:
    """Serves metrics and health on ``listen`` (``host:port``; port 0 picks a free one)."""

    def __init__(
        self, listen: str, health: Check, ready: Check, pages: dict[str, Page] | None = None
    ) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics.listen: expected HOST:PORT, got {listen!r}")
        checks = {"/healthz": health, "/readyz": ready}
        served = dict(pages or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(REGISTRY)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in checks:
                    ok, why = checks[path]()
                    self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain")
                elif path in served:
                    self._reply(*served[path]())
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header(
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                )
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the logs

        try:
            self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics.listen / --metrics-listen {listen}: cannot listen there "
                f"({exc.strerror or exc}); give each replica on a host its own port, "
                "or an empty value to run without the endpoint"
            ) from exc
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="leasectl-http", daemon=True
        )

    def start(self) -> HttpEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
