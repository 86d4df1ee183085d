"""FastAPI / Starlette: run an App inside the web app's lifespan; serve its metrics and health.

:Status: Beta

Every worker process of the server is one replica: each starts its own App in its lifespan
(after the server forked it), so with ``uvicorn --workers 4`` four replicas campaign and one
runs each leased loop. The App's own HTTP endpoint is turned off (every worker would try the
same port); ``/metrics``, ``/healthz`` and ``/readyz`` are routes of the host app instead,
answered by whichever worker takes the request (each exports its own process's series).

Example::

    from fastapi import FastAPI
    from leasectl import App
    from leasectl.integrations.asgi import install

    jobs = App()
    api = FastAPI()
    install(api, jobs, prefix="/leasectl")   # lifespan + /leasectl/metrics, /healthz, /readyz

``install`` wraps the lifespan the app already has, so your own startup code still runs (the
App starts before it, stops after it). Needs the ``fastapi`` extra (``starlette``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from leasectl.app import App
from leasectl.extras import require

try:
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
except ImportError:  # one line naming the extra, not an ImportError from deep inside
    require("fastapi", "leasectl.integrations.asgi")
    raise

from leasectl.integrations._endpoints import HEALTH_PATHS, check, metrics_body
from leasectl.integrations.starter import Starter, endpoint_off, starting


@asynccontextmanager
async def running(
    app: App, *, start_timeout: float = 10.0, stop_grace: float | None = None
) -> AsyncIterator[Starter]:
    """``async with running(app):`` — the App runs (or is starting) inside the block.

    Start-up waits at most ``start_timeout`` s (see :mod:`leasectl.integrations.starter`);
    leaving the block drains ticks and leader functions, releases every lease, stops.
    """
    endpoint_off(app)  # the host app serves /metrics; no port per worker
    starter = Starter(app)
    await anyio.to_thread.run_sync(starter.start, start_timeout)
    try:
        yield starter
    finally:
        await anyio.to_thread.run_sync(starter.stop, stop_grace)


def lifespan(
    app: App, *, start_timeout: float = 10.0, stop_grace: float | None = None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """For ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``."""

    @asynccontextmanager
    async def context(_web: Any) -> AsyncIterator[None]:
        async with running(app, start_timeout=start_timeout, stop_grace=stop_grace):
            yield

    return context


def mount(web: Starlette, app: App, *, prefix: str = "") -> None:
    """Add ``{prefix}/metrics``, ``{prefix}/healthz`` and ``{prefix}/readyz`` to ``web``."""

    async def metrics(_request: Request) -> Response:
        body, ctype = metrics_body()
        return Response(body, media_type=ctype)

    def health_route(which: str) -> Callable[[Request], Any]:
        async def endpoint(_request: Request) -> Response:
            code, text = check(app, which, starting(app))
            return PlainTextResponse(text, status_code=code)

        return endpoint

    web.add_route(f"{prefix}/metrics", metrics, methods=["GET"])
    for path, which in HEALTH_PATHS.items():
        web.add_route(f"{prefix}{path}", health_route(which), methods=["GET"])


def install(
    web: Starlette,
    app: App,
    *,
    prefix: str = "",
    start_timeout: float = 10.0,
    stop_grace: float | None = None,
) -> None:
    """Run ``app`` in ``web``'s lifespan (around the one it has) and mount its endpoints."""
    inner = web.router.lifespan_context
    mount(web, app, prefix=prefix)

    @asynccontextmanager
    async def combined(web_app: Any) -> AsyncIterator[Any]:
        async with running(app, start_timeout=start_timeout, stop_grace=stop_grace):
            async with inner(web_app) as state:
                yield state

    web.router.lifespan_context = combined


__all__ = ["install", "lifespan", "mount", "running"]
