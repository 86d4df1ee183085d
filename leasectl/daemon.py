"""``leasectl run``: the clustered daemon.

Start-up order matters: migrations first (under the migration lock), then the lease manager
(which verifies the lock path and the safety inequality before campaigning), then the
scheduler, then the HTTP endpoint. Shutdown reverses it: stop new ticks, drain running ticks
up to ``shutdown_grace``, then release leases with NOTIFY so a peer takes over at once.

Exit codes: 0 clean stop; 1 a runtime failure stopped the daemon (lease manager or a loop
thread died: we stop rather than run without leases); 2 bad configuration or database
unavailable at start; 130 a second signal forced an immediate exit.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from leasectl import metrics
from leasectl.db import make_pool, resolve_dsn, resolve_lock_dsn
from leasectl.errors import ConfigError
from leasectl.httpserver import HttpEndpoint
from leasectl.leases import LeaseEvent, LeaseManager, make_replica_id
from leasectl.loop import LoopSpec
from leasectl.migrate import migrate
from leasectl.scheduler import Scheduler
from leasectl.settings import Settings

log = logging.getLogger("leasectl.daemon")

EXIT_OK, EXIT_RUNTIME, EXIT_START, EXIT_FORCED = 0, 1, 2, 130


def load_loops(settings: Settings, only: tuple[str, ...]) -> tuple[list[LoopSpec], Any]:
    """The enabled loop specs and the loops' settings object, from ``scheduler.loops_package``."""
    registry = importlib.import_module(settings.scheduler.loops_package + ".registry")
    loop_settings = settings.loops if settings.loops is not None else registry.SETTINGS_CLASS()
    specs: list[LoopSpec] = registry.build_loops(loop_settings)
    if only:
        known = {s.name for s in specs} | set(registry.LOOP_MODULES)
        unknown = sorted(set(only) - known)
        if unknown:
            raise ConfigError(
                f"--only: unknown loop(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        specs = [s for s in specs if s.name in only]
    return specs, loop_settings


def metrics_listener(event: LeaseEvent) -> None:
    if event.kind == "acquired":
        metrics.LEASE_HELD.labels(event.lease).set(1)
        if event.epoch is not None:
            metrics.LEASE_EPOCH.labels(event.lease).set(event.epoch)
        metrics.LEASE_ACQUIRE_SECONDS.observe(event.seconds)
        metrics.LEASE_TRANSITIONS.labels(event.lease, "acquired").inc()
    elif event.kind in ("lost", "released"):
        metrics.LEASE_HELD.labels(event.lease).set(0)
        metrics.LEASE_TRANSITIONS.labels(event.lease, metrics.reason_class(event.reason)).inc()
        if event.kind == "lost":
            metrics.SELF_FENCE.labels(metrics.reason_class(event.reason)).inc()
    elif event.kind == "evicted":
        metrics.LEASE_TRANSITIONS.labels(event.lease, "evicted_holder").inc()
    elif event.kind == "heartbeat":
        metrics.HEARTBEAT_SECONDS.observe(event.seconds)


class Daemon:
    """One replica: lease manager + scheduler + HTTP endpoint, supervised together."""

    def __init__(self, settings: Settings, *, no_leased: bool = False) -> None:
        self.settings = settings
        self.no_leased = no_leased
        self.replica_id = make_replica_id(settings.replica.id or None)
        self.stop_requested = threading.Event()
        self.migrated = False
        self.manager: LeaseManager | None = None
        self.scheduler: Scheduler | None = None
        self.http: HttpEndpoint | None = None

    # -- health -----------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        m = self.manager
        if m is None or m.fatal is not None:
            return False, f"lease manager not running: {m.fatal if m else 'not started'}"
        if not m.connected.is_set():
            return False, "lock connection down; reconnecting"
        hb = m.last_heartbeat_ok
        limit = 3 * self.settings.leases.heartbeat_interval
        if hb is None or time.monotonic() - hb > limit:
            return False, "no successful heartbeat recently"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.migrated:
            return False, "not migrated yet"
        ok, why = self.health()
        if not ok:
            return False, why
        held = sorted(self.manager.held()) if self.manager else []
        return True, f"ready; campaigning; holding {', '.join(held) or 'no leases'}"

    # -- lifecycle --------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        dsn = resolve_dsn(s.database)
        lock_dsn = resolve_lock_dsn(s.database, dsn)
        specs, loop_settings = load_loops(s, s.scheduler.only)
        if self.no_leased:
            specs = [sp for sp in specs if sp.placement != "leased"]
        applied = migrate(dsn, s.core, lock_dsn=lock_dsn, applied_by=self.replica_id)
        self.migrated = True
        if applied:
            log.info("applied migrations: %s", ", ".join(applied), extra={"action": "migrated"})
        may_lead = s.replica.may_lead and not self.no_leased
        leased = [sp.name for sp in specs if sp.placement == "leased"]
        pool = make_pool(dsn, s.database, f"leasectl-work/{self.replica_id}")
        try:
            self.manager = LeaseManager(
                self.replica_id,
                leased,
                s.core,
                dsn=dsn,
                lock_dsn=lock_dsn,
                may_lead=may_lead,
                loops=[sp.name for sp in specs],
            )
            self.manager.add_listener(metrics_listener)
            self.manager.start()
            self.scheduler = Scheduler(
                specs,
                replica_id=self.replica_id,
                pool=pool,
                config=loop_settings,
                settings=s.scheduler,
                lease_manager=self.manager if may_lead else None,
            )
            self.scheduler.start()
            if s.metrics.enabled and s.metrics.listen:
                self.http = HttpEndpoint(s.metrics.listen, self.health, self.ready).start()
            log.info(
                "replica %s started: %d loops (%d leased), may_lead=%s, http=%s",
                self.replica_id,
                len(specs),
                len(leased),
                may_lead,
                self.http.port if self.http else "off",
                extra={"action": "daemon_started", "replica": self.replica_id},
            )
            code = self._supervise()
        finally:
            code = self._shutdown(locals().get("code", EXIT_RUNTIME))
            pool.close()
        return code

    def _supervise(self) -> int:
        assert self.manager is not None and self.scheduler is not None
        while not self.stop_requested.wait(0.2):
            if self.manager.fatal is not None:
                log.error(
                    "lease manager died (%s); stopping rather than run without leases",
                    self.manager.fatal,
                    extra={"action": "daemon_fatal", "replica": self.replica_id},
                )
                return EXIT_RUNTIME
            dead = self.scheduler.dead_threads()
            if dead:
                log.error(
                    "loop thread(s) died: %s; stopping",
                    ", ".join(dead),
                    extra={"action": "daemon_fatal", "replica": self.replica_id},
                )
                return EXIT_RUNTIME
        return EXIT_OK

    def _shutdown(self, code: int) -> int:
        log.info("replica %s stopping", self.replica_id, extra={"action": "daemon_stopping"})
        if self.scheduler is not None:
            drained = self.scheduler.stop(self.settings.scheduler.shutdown_grace)
            if not drained:
                log.warning(
                    "ticks still running after shutdown_grace=%ss were cancelled",
                    self.settings.scheduler.shutdown_grace,
                    extra={"action": "drain_timeout"},
                )
        if self.manager is not None:
            self.manager.stop(release=True)
        if self.http is not None:
            self.http.stop()
        log.info(
            "replica %s stopped",
            self.replica_id,
            extra={"action": "daemon_stopped", "replica": self.replica_id},
        )
        return code

    def install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                log.warning("second signal: exiting now", extra={"action": "forced_exit"})
                os._exit(EXIT_FORCED)
            log.info(
                "signal %s: graceful stop",
                signal.Signals(signum).name,
                extra={"action": "signal"},
            )
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
