"""One running replica: the parts an :class:`~leasectl.app.App` starts, supervised together.

Start-up order matters: migrations first (under the migration lock), then the work pool and
the lease manager (which verifies the lock path and the safety inequality before
campaigning), then the scheduler, then the HTTP endpoint. Shutdown reverses it: stop new
ticks, drain running ticks up to ``shutdown_grace``, then release leases with NOTIFY so a
peer takes over at once.

Exit codes (see ``leasectl.cli.exit_codes``): 0 clean stop; 1 a runtime failure stopped the
replica (lease manager or a loop thread died: we stop rather than run without leases);
2 it could not start (configuration, database, migrations, metrics port); 4 a tick wedged and
``replica.on_wedged`` is ``exit``; 130 a second signal forced an immediate exit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from leasectl import metrics, placement, status_page
from leasectl._version import __version__
from leasectl.config import redact_dsn
from leasectl.db import (
    configured_dsn,
    make_async_pool,
    make_pool,
    resolve_dsn,
    resolve_lock_dsn,
)
from leasectl.embedded import locate_data_dir
from leasectl.errors import ConfigError, DatabaseUnavailable
from leasectl.event_loop import EventLoopThread
from leasectl.httpserver import HttpEndpoint, Page
from leasectl.lease_manager import LeaseManager, make_replica_id
from leasectl.leases import LeaseEvent
from leasectl.limits import RateLimiter
from leasectl.loop import LoopSpec
from leasectl.loop_control import LoopControl
from leasectl.migrate import MigrationSource, migrate
from leasectl.scheduler import Scheduler
from leasectl.settings import MetricsSettings, Settings
from leasectl.status import ClusterStatus, read_cluster

log = logging.getLogger("leasectl.daemon")

EXIT_OK, EXIT_RUNTIME, EXIT_START, EXIT_WEDGED, EXIT_FORCED = 0, 1, 2, 4, 130

#: The supervisor's slow safety poll (loop threads that died; a tick that returned from a
#: wedge). A lease manager that ends wakes it at once, and it also wakes when the earliest
#: running tick would become wedged, so nothing it watches waits for this poll but those two.
_SUPERVISE_EVERY = 5.0


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
    """One replica: lease manager + scheduler + HTTP endpoint, supervised together.

    :param specs: the loops to run (already filtered by ``only`` / ``no_leased``).
    :param configs: loop name → the settings object its ticks see as ``ctx.config``.
    :param migrations: extra migration folders, applied after leasectl's own.
    """

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[LoopSpec],
        *,
        configs: Mapping[str, Any] | None = None,
        migrations: Sequence[MigrationSource] = (),
        no_leased: bool = False,
        leases: Mapping[str, placement.LeasePolicy] | None = None,
        idle_leases: Sequence[str] = (),
        lease_listeners: Sequence[Callable[[LeaseEvent], None]] = (),
        async_leaders: bool = False,
    ) -> None:
        self.settings = settings
        #: added before the manager campaigns, so they hear this replica's first acquisition
        self.lease_listeners = list(lease_listeners)
        #: async leader functions need the event-loop thread too (they run there, as async
        #: ticks do), even in an App without async loops
        self.async_leaders = async_leaders
        #: leases without loops (``app.lease`` / ``@app.leader``) and their placement wishes;
        #: ``idle_leases`` are campaigned for only once :meth:`LeaseManager.resume` says so
        self.leases = dict(leases or {})
        self.idle_leases = list(idle_leases)
        self.specs = list(specs)
        self.configs = dict(configs or {})
        self.migrations = list(migrations)
        self.no_leased = no_leased
        self.replica_id = make_replica_id(settings.replica.id or None)
        self.stop_requested = threading.Event()
        self._attention = threading.Event()  # wakes the supervisor: a stop, a manager exit
        self.migrated = False
        self.manager: LeaseManager | None = None
        self.scheduler: Scheduler | None = None
        self.http: HttpEndpoint | None = None
        self._pool: Any = None
        self._exit: int | None = None
        self._supervisor: threading.Thread | None = None
        self._stopped = False
        self.wedged: set[str] = set()
        self.limiter: RateLimiter | None = None
        self.control: LoopControl | None = None
        self._dsn = ""
        self.event_loop: EventLoopThread | None = None  # only with async loops

    def _open_http(self, listen: str) -> HttpEndpoint:
        """Bind the HTTP endpoint; only the *default* port falls back to a free one.

        The default config must start several replicas on one host (the first thing a new user
        tries). A port an operator chose is theirs to fix, so a clash there stays an error.
        """
        try:
            return HttpEndpoint(listen, self.health, self.ready, self._pages())
        except ConfigError as exc:
            cause = exc.__cause__
            in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
            if listen != MetricsSettings.listen or not in_use:
                raise
        host = listen.rpartition(":")[0]
        http = HttpEndpoint(f"{host}:0", self.health, self.ready, self._pages())
        log.warning(
            "metrics.listen %s (the default) is in use, most likely by another replica on this "
            "host: serving /metrics, /healthz and /readyz on %s:%d instead (the status page "
            "too); give each replica its own metrics.listen (LEASECTL_METRICS__LISTEN) for a "
            "port Prometheus can find",
            listen,
            host,
            http.port,
            extra={"action": "metrics_port_fallback", "replica": self.replica_id},
        )
        return http

    def _pages(self) -> dict[str, Page]:
        """The status page (``/``) and its JSON (``/status.json``): see status-page.md."""
        return {"/": self.status_html, "/status.json": self.status_json}

    # -- health -----------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if self.wedged:
            # A supervisor should restart us: the stuck thread holds a loop that cannot run here.
            return False, f"wedged tick(s): {', '.join(sorted(self.wedged))}"
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

    # -- the status page ----------------------------------------------------------------------

    def cluster_status(self) -> ClusterStatus:
        """The cluster read model, read through the work pool (any replica sees it all).

        :raises DatabaseUnavailable: not started, or the database cannot be read.
        """
        pool = self._pool
        if pool is None or not self.migrated:
            raise DatabaseUnavailable("the replica is starting: not migrated yet")
        leased = sorted(sp.name for sp in self.specs if sp.placement == "leased")
        try:
            with pool.connection(timeout=5.0) as conn:
                return read_cluster(conn, self.settings, expected=leased, dsn=self._dsn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise DatabaseUnavailable(f"cannot read the cluster status: {exc}") from exc

    def identity(self) -> dict[str, Any]:
        """This replica as the status page shows it (nothing secret)."""
        return {
            "replica": self.replica_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "may lead": self.may_lead,
            "labels": list(self.settings.replica.labels),
            "holds": sorted(self.manager.held()) if self.manager else [],
            "loops here": [sp.name for sp in self.specs],
            "health": self.health()[1],
        }

    def status_html(self) -> tuple[int, bytes, str]:
        try:
            page = status_page.render_page(self.cluster_status(), self.identity())
        except DatabaseUnavailable as exc:
            page = status_page.error_page(str(exc), self.identity())
            return 503, page.encode(), "text/html; charset=utf-8"
        return 200, page.encode(), "text/html; charset=utf-8"

    def status_json(self) -> tuple[int, bytes, str]:
        try:
            data = {**self.cluster_status().to_json(), "replica": self.identity()}
        except DatabaseUnavailable as exc:
            return 503, json.dumps({"error": str(exc)}).encode(), "application/json"
        return 200, json.dumps(data, default=str).encode(), "application/json"

    def ready(self) -> tuple[bool, str]:
        if not self.migrated:
            return False, "not migrated yet"
        ok, why = self.health()
        if not ok:
            return False, why
        if not self.may_lead:
            return True, "ready; not leading (--no-leased / replica.may_lead: false)"
        held = sorted(self.manager.held()) if self.manager else []
        return True, f"ready; campaigning; holding {', '.join(held) or 'no leases'}"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def may_lead(self) -> bool:
        return self.settings.replica.may_lead and not self.no_leased

    def start(self) -> None:
        """Migrate, connect, start campaigning and the loop threads; raise if any part fails
        (everything started so far is stopped again)."""
        s = self.settings
        embedded = configured_dsn(s.database) is None
        dsn = resolve_dsn(s.database)
        lock_dsn = resolve_lock_dsn(s.database, dsn)
        self._dsn = dsn
        self._announce_database(dsn, lock_dsn, embedded)
        try:
            if s.metrics.enabled and s.metrics.listen:
                # Bound before anything else: a port clash must fail before we campaign.
                self.http = self._open_http(s.metrics.listen).start()
            self.specs, dropped = placement.runnable(self.specs, s.replica.labels, s.leases.loops)
            for name, needs in dropped.items():
                log.info(
                    "not leading loop %s here: it requires labels %s (replica.labels: %s)",
                    name,
                    ", ".join(needs),
                    ", ".join(s.replica.labels) or "none",
                    extra={"action": "loop_not_placed", "loop": name, "replica": self.replica_id},
                )
            metrics.declare(self.specs, may_lead=self.may_lead)  # every series from the start
            applied = migrate(
                dsn,
                s.core,
                lock_dsn=lock_dsn,
                applied_by=self.replica_id,
                sources=self.migrations,
            )
            self.migrated = True
            if applied:
                log.info("applied migrations: %s", ", ".join(applied), extra={"action": "migrated"})
            leased = [sp.name for sp in self.specs if sp.placement == "leased"]
            if self.may_lead:
                idle = set(self.idle_leases)
                metrics.declare_leases([n for n in self.leases if n not in idle])
                metrics.declare_leases(idle, wanted=False)
            self._pool = make_pool(dsn, s.database, f"leasectl-work/{self.replica_id}")
            self.limiter = RateLimiter(self._pool, s.limits)
            if self.async_leaders or any(sp.is_async for sp in self.specs):
                work_name = f"leasectl-work/{self.replica_id}"
                self.event_loop = EventLoopThread(
                    lambda: make_async_pool(dsn, s.database, work_name)
                )
                self.event_loop.start()
            self.manager = LeaseManager(
                self.replica_id,
                leased + list(self.leases),
                s.core,
                dsn=dsn,
                lock_dsn=lock_dsn,
                may_lead=self.may_lead,
                loops=[sp.name for sp in self.specs] + list(self.leases),
                labels=s.replica.labels,
                policies={**placement.declared(self.specs), **self.leases},
                on_demand=self.idle_leases,
            )
            self.control = LoopControl(
                self._pool,
                leased=leased,
                everywhere=[sp.name for sp in self.specs if sp.placement != "leased"],
                poll_interval=s.scheduler.control_poll_interval,
            )
            self.control.start()  # pauses read before the first tick can start
            self.manager.add_control_listener(self.control.poke)
            self.manager.add_listener(metrics_listener)
            for listener in self.lease_listeners:
                self.manager.add_listener(listener)
            self.manager.add_exit_listener(self._attention.set)
            self.manager.start()
            self.scheduler = Scheduler(
                self.specs,
                replica_id=self.replica_id,
                pool=self._pool,
                config=None,
                configs=self.configs,
                settings=s.scheduler,
                lease_manager=self.manager if self.may_lead else None,
                limiter=self.limiter,
                control=self.control,
                event_loop=self.event_loop,
            )
            self.scheduler.start()
        except BaseException:
            self._teardown()
            raise
        log.info(
            "replica %s started: %d loops (%d leased), may_lead=%s, http=%s",
            self.replica_id,
            len(self.specs),
            len(leased),
            self.may_lead,
            self.http.port if self.http else "off",
            extra={"action": "daemon_started", "replica": self.replica_id},
        )
        self._supervisor = threading.Thread(
            target=self._supervise, name="leasectl-supervisor", daemon=True
        )
        self._supervisor.start()

    @property
    def pool(self) -> Any:
        """The work pool (a ``psycopg_pool.ConnectionPool``) once started."""
        return self._pool

    def _announce_database(self, dsn: str, lock_dsn: str, embedded: bool) -> None:
        """Say which database this replica leads on: a host that forgot its DSN must not
        silently lead every loop alone on a private server."""
        if embedded:
            log.warning(
                "NO DSN CONFIGURED: using the embedded PostgreSQL in %s (%s). It is for trying "
                "leasectl on one machine, runs with fsync off, and no replica on another host "
                "can see it. Set database.dsn / LEASECTL_DSN for a cluster; stop the embedded "
                "server with `leasectl embedded stop`.",
                locate_data_dir(self.settings.database.data_dir),
                redact_dsn(dsn),
                extra={"action": "database_embedded", "replica": self.replica_id},
            )
            return
        log.info(
            "database: %s%s",
            redact_dsn(dsn),
            f" (lock connection: {redact_dsn(lock_dsn)})" if lock_dsn != dsn else "",
            extra={"action": "database", "replica": self.replica_id},
        )

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._attention.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until a stop is requested or a fatal failure happened; the exit code so far
        (None on timeout)."""
        if not self.stop_requested.wait(timeout):
            return None
        return self._exit if self._exit is not None else EXIT_OK

    def _next_check(self) -> float:
        """Seconds until the supervisor must look again: when the earliest running tick would
        become wedged, no later than a tick starting now could (its ``timeout +
        wedge_grace``), and at most the slow safety poll."""
        scheduler = self.scheduler
        if scheduler is None:
            return _SUPERVISE_EVERY
        grace = self.settings.scheduler.wedge_grace
        now = scheduler.clock()
        delay = _SUPERVISE_EVERY
        for name, st in scheduler.loops.items():
            started = st.tick_started
            if name in self.wedged:
                continue  # already wedged: its return is seen by the safety poll
            limit = st.spec.timeout + grace
            delay = min(delay, limit if started is None else started + limit - now)
        return max(delay, 0.0) + 0.01  # just past the limit: wedged() is strict

    def _supervise(self) -> None:
        assert self.manager is not None and self.scheduler is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        while not self.stop_requested.is_set():
            self._attention.wait(self._next_check())
            self._attention.clear()
            if self.stop_requested.is_set() or self.scheduler is None:
                return
            self._watch_wedged()
            if self.manager.fatal is not None:
                log.error(
                    "lease manager died (%s); stopping rather than run without leases",
                    self.manager.fatal,
                    extra={"action": "daemon_fatal", "replica": self.replica_id},
                )
                self._exit = EXIT_RUNTIME
                self.stop_requested.set()
            dead = self.scheduler.dead_threads()
            if dead:
                log.error(
                    "loop thread(s) died: %s; stopping",
                    ", ".join(dead),
                    extra={"action": "daemon_fatal", "replica": self.replica_id},
                )
                self._exit = EXIT_RUNTIME
                self.stop_requested.set()

    def _watch_wedged(self) -> None:
        """Give up the leases of ticks that outlived ``timeout + wedge_grace``; report them."""
        assert self.manager is not None and self.scheduler is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        now = set(self.scheduler.wedged(self.settings.scheduler.wedge_grace))
        if now == self.wedged:
            return
        leased = {sp.name for sp in self.specs if sp.placement == "leased"}
        for name in sorted(now - self.wedged):
            metrics.LOOP_WEDGED.labels(name).set(1)
            action = self.settings.replica.on_wedged
            log.error(
                "loop %s is WEDGED: its tick ran past timeout + scheduler.wedge_grace and ignored "
                "cancellation; %s",
                name,
                "giving up its lease so another replica runs it"
                if name in leased
                else "it stays stuck on this replica",
                extra={"action": "loop_wedged", "loop": name, "replica": self.replica_id},
            )
            if name in leased:
                self.manager.abandon(name, "wedged_tick")
            if action == "exit":
                self._exit = EXIT_WEDGED
                self.stop_requested.set()
        for name in sorted(self.wedged - now):
            metrics.LOOP_WEDGED.labels(name).set(0)
            log.warning(
                "loop %s: its wedged tick returned; campaigning for it again",
                name,
                extra={"action": "loop_unwedged", "loop": name, "replica": self.replica_id},
            )
            self.manager.resume(name)
        self.wedged = now
        self.manager.report_wedged(now)

    def stop(self, grace: float | None = None) -> int:
        """Drain, release, stop; the exit code (0 unless a fatal failure stopped us)."""
        self.request_stop()
        if self._stopped:
            return self._exit or EXIT_OK
        log.info("replica %s stopping", self.replica_id, extra={"action": "daemon_stopping"})
        if self.scheduler is not None:
            grace = self.settings.scheduler.shutdown_grace if grace is None else grace
            drained = self.scheduler.stop(grace)
            self.scheduler = None
            if not drained:
                log.warning(
                    "ticks still running after shutdown_grace=%ss were cancelled",
                    grace,
                    extra={"action": "drain_timeout"},
                )
        self._teardown()
        log.info(
            "replica %s stopped",
            self.replica_id,
            extra={"action": "daemon_stopped", "replica": self.replica_id},
        )
        return self._exit or EXIT_OK

    def _teardown(self) -> None:
        """Stop whatever was started, newest first (also after a failed start)."""
        if self.scheduler is not None and not self._stopped:
            self.scheduler.stop(0)  # a failed start: nothing to drain for
        self._stopped = True
        self.request_stop()
        if self.manager is not None:
            self.manager.stop(release=True)
        if self.control is not None:
            self.control.stop()
        if self.http is not None:
            self.http.stop()
        if self.event_loop is not None:
            self.event_loop.stop()
        if self._pool is not None:
            self._pool.close()
