"""OpenTelemetry (leasectl.integrations.otel) with the SDK's in-memory exporter, on a real App."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode, get_tracer  # noqa: E402

from leasectl import App, AsyncTickContext, LeaseHandle, TickContext  # noqa: E402
from leasectl.integrations.otel import instrument  # noqa: E402
from leasectl.lease_manager import request_step_down  # noqa: E402
from tests.conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.slow


def _spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_ticks_and_leader_runs_are_spans_with_nested_user_spans(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    user = get_tracer("user-code", tracer_provider=provider)
    app = App(dsn=dsn)
    app.configure(metrics_listen="")
    instrument(app, tracer_provider=provider)

    @app.loop(every=1, leased=True, jitter=0.0)
    def good(ctx: TickContext) -> None:
        with user.start_as_current_span("user-work"), ctx.transaction() as cur:
            cur.execute("SELECT 1")

    @app.loop(every=1, leased=True, jitter=0.0)
    def bad(ctx: TickContext) -> None:
        raise ValueError("broken partner API")

    @app.loop(every=1, leased=True, jitter=0.0)
    async def agood(ctx: AsyncTickContext) -> None:
        with user.start_as_current_span("user-async-work"):
            async with ctx.transaction() as cur:
                await cur.execute("SELECT 1")

    @app.leader("poller")
    def poller(lease: LeaseHandle) -> None:
        with user.start_as_current_span("user-poll"):
            lease.done.wait()

    caplog.set_level(logging.INFO, logger="leasectl.otel")
    app.start()
    app_replica = [app.replica_id]
    try:
        wait_until(lambda: _spans(exporter, "leasectl.tick good"), 30, what="a good tick span")
        wait_until(lambda: _spans(exporter, "leasectl.tick bad"), 30, what="a bad tick span")
        wait_until(lambda: _spans(exporter, "leasectl.tick agood"), 30, what="an async tick span")
        wait_until(lambda: app.is_leader("poller"), 30, what="poller leads")
        with psycopg.connect(dsn, autocommit=True) as conn:
            request_step_down(conn, lease="poller", cooldown=60)
        wait_until(
            lambda: _spans(exporter, "leasectl.leader poller"), 30, what="the leader span ends"
        )
    finally:
        app.stop(grace=5)

    tick = _spans(exporter, "leasectl.tick good")[0]
    attrs: dict[str, Any] = dict(tick.attributes or {})
    assert attrs["leasectl.loop"] == "good" and attrs["leasectl.lease"] == "good"
    assert attrs["leasectl.epoch"] >= 1 and attrs["leasectl.outcome"] == "ok"
    assert attrs["leasectl.slot"].endswith("+00:00")
    assert attrs["leasectl.replica"] == app_replica[0]
    work = [s for s in _spans(exporter, "user-work") if s.context.trace_id == tick.context.trace_id]
    assert work and work[0].parent is not None and work[0].parent.span_id == tick.context.span_id

    atick = _spans(exporter, "leasectl.tick agood")[0]
    assert atick.attributes is not None and atick.attributes["leasectl.outcome"] == "ok"
    assert atick.attributes["leasectl.lease"] == "agood"
    awork = [s for s in _spans(exporter, "user-async-work") if s.parent is not None]
    assert any(s.parent.span_id == atick.context.span_id for s in awork if s.parent), awork

    failed = _spans(exporter, "leasectl.tick bad")[0]
    assert failed.attributes is not None and failed.attributes["leasectl.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert "broken partner API" in str(failed.events[0].attributes["exception.message"])

    run = _spans(exporter, "leasectl.leader poller")[0]
    assert run.attributes is not None and run.attributes["leasectl.outcome"] == "stopped"
    epoch = run.attributes["leasectl.epoch"]
    assert isinstance(epoch, int) and epoch >= 1
    poll = _spans(exporter, "user-poll")[0]
    assert poll.parent is not None and poll.parent.span_id == run.context.span_id
    lost = [e for e in run.events if e.name == "lease lost"]
    assert lost and lost[0].attributes is not None
    assert str(lost[0].attributes["leasectl.reason"]).startswith("step_down")

    acquired = [
        s
        for s in _spans(exporter, "leasectl.lease acquired")
        if s.attributes and s.attributes["leasectl.lease"] == "poller"
    ]
    assert acquired, "no span for the acquisition"
    logged = [r for r in caplog.records if getattr(r, "action", "") == "lease_acquired_traced"]
    trace_ids = {f"{s.context.trace_id:032x}" for s in acquired}
    assert any(getattr(r, "trace_id", None) in trace_ids for r in logged), logged
