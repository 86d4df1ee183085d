"""What the framework integrations serve: the App's metrics and health, framework-free."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from leasectl.app import App
from leasectl.metrics import REGISTRY

#: Path (below the integration's prefix) -> which check answers it.
HEALTH_PATHS = {"/healthz": "health", "/readyz": "ready"}


def metrics_body() -> tuple[bytes, str]:
    """This process's metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def check(app: App, which: str, starting: str | None = None) -> tuple[int, str]:
    """(HTTP status, text) of ``app.health()`` / ``app.ready()``; ``starting``: why the App
    is not running yet (a start still under way, or the error it failed with)."""
    if starting is not None and not app.running:
        return 503, starting + "\n"  # a 'not running' answer would hide why
    ok, why = app.health() if which == "health" else app.ready()
    return (200 if ok else 503), why + "\n"
