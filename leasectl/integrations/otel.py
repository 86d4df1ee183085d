"""OpenTelemetry tracing for an App: one span per tick and per leader run.

:Status: Beta

Each tick runs inside a span ``leasectl.tick <loop>`` and each leader run inside
``leasectl.leader <lease>``, current on the thread that runs the user's function, so the
spans it starts (a database driver's, an HTTP client's) nest under it. Attributes:
``leasectl.loop``, ``leasectl.lease``, ``leasectl.epoch``, ``leasectl.slot`` (a tick's
scheduled UTC slot), ``leasectl.replica`` and, at the end, ``leasectl.outcome`` (``ok``,
``failed``, ``lost``, ``cancelled`` for a tick; ``returned``, ``stopped``, ``failed`` for a
leader run). A raised exception is recorded on the span; ``failed`` sets its status to ERROR.

Lease transitions are not inside any request: each acquisition and loss is its own short
span ``leasectl.lease acquired|lost`` (attributes lease, epoch, reason), added as an event to
the lease's running leader span, and logged with its ``trace_id`` and ``span_id``.

Example::

    from leasectl.integrations.otel import instrument

    app = App()
    instrument(app)                 # before app.start(); uses the global TracerProvider

Needs the ``otel`` extra (``opentelemetry-api``; an SDK and exporter are yours to set up).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from leasectl._version import __version__
from leasectl.app import App
from leasectl.errors import FencingRejected, LeaseLost, TickCancelled
from leasectl.extras import require
from leasectl.leader import LeaseHandle
from leasectl.leases import LeaseEvent
from leasectl.loop import AsyncTickContext, TickContext

try:
    from opentelemetry import trace
    from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider
except ImportError:  # one line naming the extra, not an ImportError from deep inside
    require("otel", "leasectl.integrations.otel")
    raise

log = logging.getLogger("leasectl.otel")


class _Tracing:
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._leaders: dict[str, Span] = {}  # lease -> its running leader span
        self._lock = threading.Lock()

    def _tick_span(self, ctx: TickContext | AsyncTickContext) -> Any:
        attributes: dict[str, Any] = {
            "leasectl.loop": ctx.loop,
            "leasectl.replica": ctx.replica_id,
            "leasectl.slot": ctx.tick_at.isoformat(),
        }
        if ctx.lease is not None:
            attributes["leasectl.lease"] = ctx.lease.name
            attributes["leasectl.epoch"] = ctx.lease.epoch
        return self.tracer.start_as_current_span(
            f"leasectl.tick {ctx.loop}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def tick(self, ctx: TickContext, run: Callable[[TickContext], None]) -> None:
        with self._tick_span(ctx) as span, _outcome(span):
            run(ctx)

    async def async_tick(
        self, ctx: AsyncTickContext, run: Callable[[AsyncTickContext], Awaitable[None]]
    ) -> None:
        # Entered inside the tick's task: the span is current in that task's context only.
        with self._tick_span(ctx) as span, _outcome(span):
            await run(ctx)

    def leader(self, handle: LeaseHandle, run: Callable[[], None]) -> None:
        with self.tracer.start_as_current_span(
            f"leasectl.leader {handle.name}",
            attributes={
                "leasectl.lease": handle.name,
                "leasectl.epoch": handle.epoch,
                "leasectl.replica": handle.replica_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            with self._lock:
                self._leaders[handle.name] = span
            outcome = "failed"
            try:
                run()
                outcome = "stopped" if handle.done.is_set() else "returned"
            except (LeaseLost, TickCancelled) as exc:
                outcome = "stopped"
                span.record_exception(exc)
                raise
            except BaseException as exc:
                if type(exc).__name__ == "CancelledError":  # an async leader cancelled
                    outcome = "stopped"
                else:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                span.set_attribute("leasectl.outcome", outcome)
                with self._lock:
                    if self._leaders.get(handle.name) is span:
                        del self._leaders[handle.name]

    def transition(self, what: str, event: LeaseEvent) -> None:
        attributes: dict[str, Any] = {
            "leasectl.lease": event.lease,
            "leasectl.reason": event.reason,
        }
        if event.epoch is not None:
            attributes["leasectl.epoch"] = event.epoch
        with self._lock:
            leader = self._leaders.get(event.lease)
        if leader is not None and leader.is_recording():
            leader.add_event(f"lease {what}", attributes)
        with self.tracer.start_as_current_span(
            f"leasectl.lease {what}", attributes=attributes
        ) as span:
            sc = span.get_span_context()
            log.info(
                "lease %s %s (epoch %s): %s",
                event.lease,
                what,
                event.epoch,
                event.reason,
                extra={
                    "action": f"lease_{what}_traced",
                    "lease": event.lease,
                    "epoch": event.epoch,
                    "trace_id": trace.format_trace_id(sc.trace_id),
                    "span_id": trace.format_span_id(sc.span_id),
                },
            )


@contextmanager
def _outcome(span: Span) -> Iterator[None]:
    """Record how the tick inside ended: ``leasectl.outcome``, the exception, ERROR."""
    outcome = "failed"
    try:
        yield
        outcome = "ok"
    except (LeaseLost, FencingRejected) as exc:
        outcome = "lost"
        span.record_exception(exc)
        raise
    except (TickCancelled, asyncio.CancelledError) as exc:
        outcome = "cancelled"
        span.record_exception(exc)
        raise
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.set_attribute("leasectl.outcome", outcome)


def instrument(app: App, *, tracer_provider: TracerProvider | None = None) -> None:
    """Trace ``app``'s ticks, leader runs and lease transitions (call before ``start()``).

    :param tracer_provider: default the global one (``trace.set_tracer_provider``).
    """
    tracing = _Tracing(trace.get_tracer("leasectl", __version__, tracer_provider))
    app.wrap(tick=tracing.tick, async_tick=tracing.async_tick, leader=tracing.leader)
    app.on_acquired(lambda event: tracing.transition("acquired", event))
    app.on_lost(lambda event: tracing.transition("lost", event))


__all__ = ["instrument"]
