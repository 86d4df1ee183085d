"""Start an App in the background without blocking the host's start-up past a bound.

A web server's start-up hook must not wait for a database that is slow to answer (``App.start``
retries its connection for up to two minutes). :class:`Starter` runs ``start()`` on its own
thread and waits for it only ``start_timeout`` seconds: a failure within that time fails the
host's start-up (the error is the App's own, one line); a start still under way then goes on
in the background (``/readyz`` answers 503 "starting" until it is done, and a later failure is
logged and answered there).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import replace

from leasectl.app import App

log = logging.getLogger("leasectl.integrations")

#: The latest starter of each App, so the health routes can say why it is not running yet.
_latest: weakref.WeakKeyDictionary[App, Starter] = weakref.WeakKeyDictionary()


def starting(app: App) -> str | None:
    """Why ``app`` is not running yet ("starting", its start error), or None once running."""
    if app.running:
        return None
    starter = _latest.get(app)
    return starter.state if starter is not None else "starting"


def endpoint_off(app: App) -> None:
    """Turn the App's own HTTP endpoint off: the host app serves ``/metrics`` and health
    (every worker would try the same port). Keeps whatever settings the App was given."""
    settings = app.settings
    app.configure(settings=replace(settings, metrics=replace(settings.metrics, listen="")))


class Starter:
    """``start(timeout)`` then ``stop()``; :attr:`state` says why the App is not running yet."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        _latest[app] = self

    @property
    def state(self) -> str | None:
        """None once running; else "starting" or the start's error."""
        if self.error is not None:
            return f"start failed: {self.error}"
        return None if self._done.is_set() else "starting"

    def start(self, timeout: float) -> None:
        """Start the App; wait up to ``timeout`` s. Re-raises a failure seen in that time."""
        self._thread = threading.Thread(target=self._start, name="leasectl-start", daemon=True)
        self._thread.start()
        if not self._done.wait(timeout):
            log.warning(
                "leasectl App still starting after %ss; the server starts anyway, /readyz says "
                "503 until it is running",
                timeout,
                extra={"action": "start_backgrounded"},
            )
            return
        if self.error is not None:
            raise self.error

    def _start(self) -> None:
        try:
            self.app.start()
        except BaseException as exc:
            self.error = exc
            log.error("leasectl App failed to start: %s", exc, extra={"action": "start_failed"})
        finally:
            self._done.set()

    def stop(self, grace: float | None = None) -> int:
        """Stop the App (after its start, if that is still under way); the exit code."""
        if self._thread is not None:
            self._thread.join()
        return self.app.stop(grace)
