"""Flask (or any WSGI app): serve an App's metrics and health next to your routes.

:Status: Beta

A WSGI server has no lifespan: start the App where the server runs your code in each worker
process after it forked (gunicorn: :mod:`leasectl.integrations.gunicorn`). This module only
answers ``{prefix}/metrics``, ``{prefix}/healthz`` and ``{prefix}/readyz`` in front of the
host app, so the App's own endpoint stays off (workers would fight over its port).

Example (Flask)::

    from flask import Flask
    from leasectl import App
    from leasectl.integrations.wsgi import mount

    jobs = App()
    web = Flask(__name__)
    mount(web, jobs, prefix="/leasectl")    # wraps web.wsgi_app

Needs no framework: any WSGI callable works with :class:`Endpoints` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from leasectl.app import App
from leasectl.integrations._endpoints import HEALTH_PATHS, check, metrics_body
from leasectl.integrations.starter import starting

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Endpoints:
    """WSGI middleware: the App's endpoints under ``prefix``, everything else to ``inner``."""

    def __init__(
        self,
        inner: WsgiApp,
        app: App,
        *,
        prefix: str = "",
    ) -> None:
        self.inner = inner
        self.app = app
        self.prefix = prefix

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == f"{self.prefix}/metrics":
            body, ctype = metrics_body()
            return _reply(start_response, 200, body, ctype)
        for suffix, which in HEALTH_PATHS.items():
            if path == f"{self.prefix}{suffix}":
                code, text = check(self.app, which, starting(self.app))
                return _reply(start_response, code, text.encode(), "text/plain; charset=utf-8")
        return self.inner(environ, start_response)


def _reply(start_response: Callable[..., Any], code: int, body: bytes, ctype: str) -> list[bytes]:
    reason = {200: "OK", 503: "Service Unavailable"}.get(code, "")
    start_response(
        f"{code} {reason}", [("Content-Type", ctype), ("Content-Length", str(len(body)))]
    )
    return [body]


def mount(web: Any, app: App, *, prefix: str = "") -> None:
    """Put :class:`Endpoints` in front of a Flask app (``web.wsgi_app``)."""
    web.wsgi_app = Endpoints(web.wsgi_app, app, prefix=prefix)


__all__ = ["Endpoints", "mount"]
