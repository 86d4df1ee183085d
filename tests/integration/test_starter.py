"""Starting an App inside a host's start-up hook (leasectl.integrations.starter, .wsgi):
bounded, with the rest of a slow start in the background, and health saying why."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from leasectl import App
from leasectl.integrations.starter import Starter, endpoint_off
from leasectl.integrations.wsgi import Endpoints
from leasectl.keys import MIGRATIONS_LEASE
from leasectl.locks import LockSession
from leasectl.settings import DatabaseSettings
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


def _get(wsgi: Endpoints, path: str) -> tuple[str, bytes]:
    """One real WSGI request through the middleware."""
    status: list[str] = []

    def start_response(code: str, headers: list[tuple[str, str]]) -> None:
        status.append(code)

    def host(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"host app"]

    body = b"".join(Endpoints(host, wsgi.app, prefix="/lc")({"PATH_INFO": path}, start_response))
    return status[0], body


def test_a_start_slower_than_the_bound_goes_on_in_the_background(empty_dsn: str) -> None:
    # Another migrator holds the migration lock: App.start() waits for it (up to 120 s).
    other = LockSession.connect(empty_dsn, DatabaseSettings(), "leasectl-test-migrator")
    assert other.try_acquire([MIGRATIONS_LEASE]) == {MIGRATIONS_LEASE}
    app = App(dsn=empty_dsn)
    endpoint_off(app)
    assert app.settings.metrics.listen == ""
    starter = Starter(app)
    wsgi = Endpoints(lambda e, s: [], app, prefix="/lc")
    try:
        starter.start(timeout=0.5)  # returns: the host's start-up goes on
        assert not app.running and starter.state == "starting"
        assert _get(wsgi, "/lc/readyz") == ("503 Service Unavailable", b"starting\n")
        assert _get(wsgi, "/other") == ("200 OK", b"host app")
        other.release([MIGRATIONS_LEASE])
        wait_until(lambda: app.running, 60, what="the start finished in the background")
        assert starter.state is None
        status, body = wait_until(
            lambda: (lambda r: r if r[0].startswith("200") else None)(_get(wsgi, "/lc/readyz")),
            30,
            what="ready",
        )
        assert body.startswith(b"ready"), body
        status, body = _get(wsgi, "/lc/metrics")
        assert status == "200 OK" and b"leasectl_heartbeat_seconds" in body
    finally:
        other.close()
        assert starter.stop(grace=5) == 0


def test_a_start_failing_within_the_bound_fails_the_host_start(empty_dsn: str) -> None:
    app = App(dsn=empty_dsn.replace("dbname=", "dbname=no_such_db_"))
    endpoint_off(app)
    starter = Starter(app)
    with pytest.raises(Exception, match="no_such_db_"):
        starter.start(timeout=60)
    assert starter.state is not None and starter.state.startswith("start failed:")
    wsgi = Endpoints(lambda e, s: [], app, prefix="/lc")
    status, body = _get(wsgi, "/lc/healthz")
    assert status.startswith("503") and body.startswith(b"start failed:"), body


def test_install_runs_the_app_around_the_host_lifespan(dsn: str) -> None:
    """The ASGI lifespan protocol driven as a server drives it, on a real Starlette app."""
    pytest.importorskip("starlette")
    import asyncio
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    from leasectl.integrations.asgi import install

    jobs = App(dsn=dsn)
    seen: list[str] = []

    @asynccontextmanager
    async def own(_web: Starlette) -> AsyncIterator[None]:
        seen.append(f"own startup, leasectl running={jobs.running}")
        yield
        seen.append(f"own shutdown, leasectl running={jobs.running}")

    web = Starlette(lifespan=own)
    install(web, jobs, prefix="/lc", start_timeout=30)
    paths = {getattr(r, "path", "") for r in web.routes}
    assert {"/lc/metrics", "/lc/healthz", "/lc/readyz"} <= paths

    async def serve() -> list[str]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()  # ASGI's send type
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        task = asyncio.create_task(web(scope, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        started = (await outbox.get())["type"]
        assert jobs.running and jobs.settings.metrics.listen == ""
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = (await outbox.get())["type"]
        await task
        return [started, stopped]

    assert asyncio.run(serve()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not jobs.running
    assert seen == ["own startup, leasectl running=True", "own shutdown, leasectl running=True"]
