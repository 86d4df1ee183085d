"""The App: the one composition root of a leasectl replica.

An :class:`App` is a set of loop declarations plus the settings to run them with. Declaring
is cheap and touches nothing; :meth:`App.start` builds the running parts (migrations, the lock
connection and its lease manager, the work pool, one thread per loop, the HTTP endpoint) and
:meth:`App.stop` takes them down in reverse. ``leasectl run`` is an App that includes the
shipped certificate loops; ``leasectl run --app mymodule:app`` runs yours.

Example::

    from leasectl import App, TickContext

    app = App()

    @app.loop(cron="0 2 * * *", tz="Europe/Berlin")   # leased: once a night, cluster-wide
    def nightly_report(ctx: TickContext) -> None:
        with ctx.transaction() as cur:        # fenced: commits only under the current epoch
            cur.execute("INSERT INTO reports (day, epoch) VALUES (current_date, %s)", (ctx.epoch,))

    if __name__ == "__main__":
        app.run()                             # blocks; SIGTERM drains, releases, exits 0

Settings are found as ``leasectl run`` finds them: ``config=`` or ``$LEASECTL_CONFIG`` or the
packaged defaults, then ``LEASECTL_*`` variables, then ``dsn=`` / ``$LEASECTL_DSN``; with no
DSN anywhere, the embedded PostgreSQL.
"""

from __future__ import annotations

import getpass
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

from leasectl import ledger, logs, loop_control, status
from leasectl._lease_block import LeaseBlock
from leasectl._wrap import AsyncTickWrapper, TickWrapper, wrap_tick
from leasectl.config import load_settings
from leasectl.daemon import EXIT_FORCED, Daemon
from leasectl.errors import ConfigError, LeasectlError
from leasectl.failures import describe
from leasectl.leader import LeaderFunction, Leadership, LeaderWrapper, LeaseDecl
from leasectl.leases import LeaseEvent
from leasectl.limits import Decision
from leasectl.loop import AsyncTickContext, LoopSpec, Misfire, TickContext
from leasectl.migrate import MigrationSource
from leasectl.settings import Settings

log = logging.getLogger("leasectl.app")

#: How often the main thread of ``App.run`` wakes to run a signal handler that arrived on
#: another thread (see ``run``); a signal that reaches the main thread acts at once.
_SIGNAL_CHECK_S = 0.2

LoopFunction = Callable[[TickContext], None] | Callable[[AsyncTickContext], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])
MigrationsArg = Iterable[str | Path | MigrationSource | tuple[str, str | Path]]


class App:
    """Loops to run on every replica of a service, and how to run them.

    :param dsn: the database; default ``database.dsn`` from the config, ``$LEASECTL_DSN``, or
        the embedded server.
    :param config: a YAML file; default ``$LEASECTL_CONFIG``, else the packaged defaults.
    :param settings: already-built :class:`~leasectl.settings.Settings` (tests, embedding);
        replaces ``config``.
    :param migrations: folders of your own ``NNNN_name.up.sql`` files, applied after
        leasectl's under the same lock and ledger. Each folder is its own version namespace
        (named by the folder, or give ``(source, path)``), so numbers never collide.
    :param replica_id: this replica's id; default ``replica.id`` or host-pid-random.
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        config: str | Path | None = None,
        settings: Settings | None = None,
        migrations: MigrationsArg = (),
        replica_id: str | None = None,
    ) -> None:
        self._dsn = dsn
        self._config = str(config) if config is not None else None
        self._settings = settings
        self._settings_given = settings is not None  # else loaded, and reloaded on include()
        self._overrides: dict[str, Any] = {}
        self._migrations = [_migration_source(m) for m in migrations]
        self._replica_id = replica_id
        self._no_leased = False
        self._own: dict[str, LoopSpec] = {}
        self._included: list[str] = []
        self._daemon: Daemon | None = None
        self._lock = threading.Lock()
        self._stop_early = threading.Event()  # a stop signal came (maybe during start())
        self._leases: dict[str, LeaseDecl] = {}  # leases without loops (leasectl.leader)
        self._leadership: Leadership | None = None
        self._lease_listeners: list[tuple[str, Callable[[LeaseEvent], None]]] = []
        self._tick_wrappers: list[TickWrapper] = []
        self._async_tick_wrappers: list[AsyncTickWrapper] = []
        self._leader_wrappers: list[LeaderWrapper] = []

    # -- declaring -------------------------------------------------------------------------

    def loop(
        self,
        every: float | timedelta | None = None,
        *,
        cron: str | None = None,
        tz: str = "UTC",
        leased: bool = True,
        name: str | None = None,
        timeout: float | timedelta = 60.0,
        run_on_start: bool | None = None,
        misfire: Misfire = "coalesce",
        max_delay: float | timedelta | None = None,
        catch_up: int = 10,
        jitter: float | timedelta | None = None,
        offset: float | timedelta = 0.0,
        description: str = "",
        preferred_holder: str | None = None,
        requires_labels: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Declare a periodic loop; the decorated function runs once per tick.

        The function is ``def f(ctx: TickContext) -> None`` or ``async def f(ctx:
        AsyncTickContext) -> None`` (run on the App's event-loop thread, cancelled on lease
        loss, shutdown and timeout).

        :param every: seconds (or a timedelta) between ticks; slots at ``offset + k * every``
            after the Unix epoch (UTC). Exactly one of ``every`` and ``cron``.
        :param cron: a cron expression (``"0 2 * * *"``, ``"0 9 * * MON-FRI"``), read in ``tz``
            with Debian cron's DST rules.
        :param tz: the IANA time zone of ``cron`` (``"Europe/Berlin"``); default UTC.
        :param leased: True: only on the replica holding the lease named ``name``, fenced by
            its epoch; each slot runs once across the cluster. False: on every replica.
        :param name: the loop's (and its lease's) name; default the function's name.
        :param timeout: the tick's deadline (``ctx.check()`` raises past it; an async tick is
            cancelled).
        :param run_on_start: run the current slot at once when the ledger has no history for
            the loop; default True for ``every``, False for ``cron``.
        :param misfire: after missed slots, ``coalesce`` runs the latest once, ``skip`` only an
            on-time one, ``all`` runs them in order (at most ``catch_up``).
        :param max_delay: a slot that can only start this much after its fire time is
            recorded as missed instead of run (default: no limit; ``skip``: max(jitter, 1 s)).
        :param catch_up: ``misfire="all"``: at most this many missed slots are run.
        :param jitter: seconds by which starts are randomly spread; default a tenth of
            ``every``, at most 10 s, and 0 for ``cron``.
        :param offset: ``every`` loops: seconds (or a timedelta) into the period at which
            slots fall (``every=timedelta(days=1), offset=timedelta(hours=2)``: 02:00 UTC).
        :param preferred_holder: leased loops: a replica id or label (``replica.labels``)
            whose replicas hold the lease when they are live (placement ranks them first).
        :param requires_labels: leased loops: only replicas with all these labels may lead it.
        :raises ConfigError: a bad schedule (both or neither of every/cron, a bad cron
            expression, an unknown zone, a negative jitter) — at declaration, not at start.
        """
        if (every is None) == (cron is None):
            raise ConfigError("@app.loop: give exactly one of every= and cron=")

        def decorate(fn: F) -> F:
            loop_name = name or str(getattr(fn, "__name__", "loop"))
            try:
                spec = LoopSpec(
                    name=loop_name,
                    interval=_seconds(every, "every") if every is not None else 0.0,
                    placement="leased" if leased else "everywhere",
                    run=fn,
                    jitter=None if jitter is None else _seconds(jitter, "jitter", zero=True),
                    timeout=_seconds(timeout, "timeout"),
                    run_on_start=(cron is None) if run_on_start is None else run_on_start,
                    misfire=misfire,
                    description=description or (fn.__doc__ or "").strip().split("\n")[0],
                    preferred_holder=preferred_holder,
                    requires_labels=(
                        (requires_labels,)
                        if isinstance(requires_labels, str)
                        else tuple(requires_labels)
                    ),
                    cron=cron,
                    tz=tz,
                    offset=_seconds(offset, "offset", zero=True),
                    max_delay=None
                    if max_delay is None
                    else _seconds(max_delay, "max_delay", zero=True),
                    catch_up=catch_up,
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self.add(spec)
            return fn

        return decorate

    def add(self, spec: LoopSpec) -> None:
        """Add an already-built :class:`LoopSpec` (what ``@app.loop`` does)."""
        self._refuse_if_started("add a loop")
        if spec.name in self._own:
            raise ConfigError(f"loop {spec.name!r} is declared twice in this App")
        self._own[spec.name] = spec

    def lease(
        self,
        name: str,
        *,
        timeout: float | None = None,
        preferred_holder: str | None = None,
        requires_labels: Iterable[str] = (),
    ) -> LeaseBlock:
        """A lease without a loop: ``with app.lease(name) as lease:`` (or ``async with``)
        waits until this replica holds it and releases it (NOTIFY) when the block ends.

        Declare it before :meth:`start` (calling this once at import is enough); the replica
        campaigns for it only while a block waits or runs. See :mod:`leasectl.leader`.

        :param timeout: seconds to wait for it (:class:`LeaseTimeout`); default forever.
        :raises ConfigError: a name not declared before start, or one a loop or leader uses.
        """
        if name not in self._leases:
            self._refuse_if_started(f"declare lease {name!r} (declare it before start())")
            self._declare(LeaseDecl(name, None, preferred_holder, _labels(requires_labels)))
        elif self._leases[name].leader is not None:
            raise ConfigError(f"lease {name!r} belongs to a @leader function; pick another name")
        return LeaseBlock(name, self._running_leadership, timeout)

    def leader(
        self,
        name: str | None = None,
        *,
        preferred_holder: str | None = None,
        requires_labels: Iterable[str] = (),
    ) -> Callable[[LeaderFunction], LeaderFunction]:
        """Run the decorated long-running function (sync or ``async``) only while this
        replica holds lease ``name`` (default: the function's name).

        It gets a :class:`~leasectl.leader.LeaseHandle`; when the lease is lost or released
        (or the App stops) ``handle.done`` is set and an ``async`` function is cancelled; it
        runs again when the lease is regained (client-go's ``RunOrDie``).
        """

        def decorate(fn: LeaderFunction) -> LeaderFunction:
            self._refuse_if_started("add a leader")
            self._declare(
                LeaseDecl(name or fn.__name__, fn, preferred_holder, _labels(requires_labels))
            )
            return fn

        return decorate

    def is_leader(self, name: str) -> bool:
        """True while this replica holds lease ``name`` (a loop's, a block's or a leader's)."""
        daemon = self._daemon
        manager = daemon.manager if daemon is not None else None
        return manager is not None and manager.lease(name) is not None

    def on_acquired(self, fn: Callable[[LeaseEvent], None]) -> Callable[[LeaseEvent], None]:
        """Call ``fn(event)`` each time this replica acquires any lease. It runs on the lease
        manager's thread: keep it short and never block (hand work to your own thread)."""
        self._lease_listeners.append(("acquired", fn))
        return fn

    def on_lost(self, fn: Callable[[LeaseEvent], None]) -> Callable[[LeaseEvent], None]:
        """Call ``fn(event)`` each time this replica stops holding a lease (lost, released,
        stepped down); ``event.reason`` says why. Same thread rules as :meth:`on_acquired`."""
        self._lease_listeners.append(("lost", fn))
        return fn

    def wrap(
        self,
        *,
        tick: TickWrapper | None = None,
        async_tick: AsyncTickWrapper | None = None,
        leader: LeaderWrapper | None = None,
    ) -> None:
        """Run every tick / ``async`` tick / leader run inside ``tick(ctx, run)`` /
        ``await async_tick(ctx, run)`` / ``leader(handle, run)`` (tracing:
        :func:`leasectl.integrations.otel.instrument`). Outermost first."""
        self._refuse_if_started("wrap")
        if tick is not None:
            self._tick_wrappers.append(tick)
        if async_tick is not None:
            self._async_tick_wrappers.append(async_tick)
        if leader is not None:
            self._leader_wrappers.append(leader)

    def leases(self) -> list[LeaseDecl]:
        """The leases without loops this App declares (``lease`` blocks and leaders)."""
        return list(self._leases.values())

    def _declare(self, decl: LeaseDecl) -> None:
        if decl.name in self._own:
            raise ConfigError(f"lease {decl.name!r}: a loop has the same name")
        if decl.name in self._leases:
            raise ConfigError(f"lease {decl.name!r} is declared twice in this App")
        self._leases[decl.name] = decl

    def _running_leadership(self) -> Leadership:
        leadership = self._leadership
        if leadership is None and self._daemon is not None:
            raise LeasectlError(
                "app.lease(...): this replica never leads (replica.may_lead: false or "
                "--no-leased), so it cannot hold a lease"
            )
        if leadership is None:
            raise LeasectlError("app.lease(...) needs a running App: call start() first")
        return leadership

    def include(self, package: str) -> None:
        """Add the loops of a loops package (``"leasectl.certs"``: the shipped certificate loops).

        The package has a ``registry`` module with ``SETTINGS_CLASS`` and
        ``build_loops(settings)``; its settings come from the config's ``loops:`` section when
        the package is ``scheduler.loops_package`` (the default, ``leasectl.certs``).
        """
        self._refuse_if_started("include a package")
        if package not in self._included:
            self._included.append(package)
            if not self._settings_given:
                self._settings = None  # its loops: section is read now, if it is the package

    def configure(
        self,
        *,
        config: str | None = None,
        dsn: str | None = None,
        replica_id: str | None = None,
        only: Sequence[str] | None = None,
        no_leased: bool | None = None,
        metrics_listen: str | None = None,
        log_format: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        """Command-line overrides (``leasectl run`` applies its flags through this).

        ``settings``: use these already-loaded settings (``leasectl status --app`` loads them
        without the loops' secrets, which reading lease state never needs).
        """
        self._refuse_if_started("configure")
        if config is not None:
            self._config = config
        if dsn:
            self._dsn = dsn
        if replica_id:
            self._replica_id = replica_id
        if only is not None:
            self._overrides["scheduler.only"] = list(only)
        if no_leased is not None:
            self._no_leased = no_leased
        if metrics_listen is not None:
            self._overrides["metrics.listen"] = metrics_listen
        if log_format is not None:
            self._overrides["logging.format"] = log_format
        # Given settings are used as they are; otherwise rebuilt with the overrides on next use.
        self._settings = settings
        self._settings_given = settings is not None

    # -- what it would run -----------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The effective settings (loaded on first use; :class:`ConfigError` if invalid).

        The config's ``loops:`` section is read (and ``scheduler.loops_package`` imported)
        only when this App includes that package: an App of one's own never imports the
        certificate loops, nor needs their settings to be valid.
        """
        if self._settings is None:
            overrides = dict(self._overrides)
            if self._dsn:
                overrides["database.dsn"] = self._dsn
            settings = load_settings(self._config, overrides=overrides, loops=self._included)
            if self._replica_id:
                settings = replace(settings, replica=replace(settings.replica, id=self._replica_id))
            self._settings = settings
        return self._settings

    def loops(self) -> list[LoopSpec]:
        """Every loop this App declares or includes, enabled ones only, before ``only``."""
        return [spec for spec, _ in self._all_loops()]

    def _all_loops(self) -> list[tuple[LoopSpec, Any]]:
        """(spec, the settings object its ticks see as ``ctx.config``)."""
        out: list[tuple[LoopSpec, Any]] = []
        seen: dict[str, str] = {name: "this App" for name in self._own}
        for package in self._included:
            specs, config = _package_loops(package, self.settings)
            for spec in specs:
                if spec.name in seen:
                    raise ConfigError(
                        f"loop {spec.name!r} from {package} clashes with one from {seen[spec.name]}"
                    )
                seen[spec.name] = package
                out.append((spec, config))
        return [(spec, None) for spec in self._own.values()] + out

    def _selected(self) -> list[tuple[LoopSpec, Any]]:
        loops = self._all_loops()
        only = self.settings.scheduler.only
        if only:
            known = {spec.name for spec, _ in loops} | self._known_names()
            unknown = sorted(set(only) - known)
            if unknown:
                raise ConfigError(
                    f"--only / scheduler.only: unknown loop(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
            loops = [(s, c) for s, c in loops if s.name in only]
        if self._no_leased:
            loops = [(s, c) for s, c in loops if s.placement != "leased"]
        if self.settings.limits:
            loops.append((RATE_LIMIT_GC, None))
        loops.append((ledger.retention_loop(self.settings.scheduler.ledger_retention), None))
        return loops

    def _known_names(self) -> set[str]:
        """Names of disabled loops too, so ``only`` may name a loop the config turned off."""
        names: set[str] = set()
        for package in self._included:
            registry = _registry(package)
            names |= set(getattr(registry, "LOOP_MODULES", ()))
        return names

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start in background threads and return once campaigning has begun.

        Everything that can fail at start-up (configuration, the database, migrations, the
        metrics port) fails here, with a :class:`LeasectlError`, before any lease is taken.
        """
        with self._lock:
            if self._daemon is not None:
                raise LeasectlError("this App is already running; stop() it first")
            settings = self.settings
            selected = self._selected()
            clash = sorted(set(self._leases) & {spec.name for spec, _ in selected})
            if clash:
                raise ConfigError(f"lease(s) {', '.join(clash)}: a loop has the same name")
            daemon = Daemon(
                settings,
                [
                    wrap_tick(spec, self._tick_wrappers, self._async_tick_wrappers)
                    for spec, _ in selected
                ],
                configs={spec.name: config for spec, config in selected},
                migrations=self.migration_sources,
                no_leased=self._no_leased,
                leases={d.name: d.policy for d in self._leases.values()},
                idle_leases=[d.name for d in self._leases.values() if d.leader is None],
                lease_listeners=[_only(kind, fn) for kind, fn in self._lease_listeners],
                async_leaders=any(
                    inspect.iscoroutinefunction(d.leader) for d in self._leases.values()
                ),
            )
            daemon.start()
            self._daemon = daemon
            if daemon.manager is not None and daemon.may_lead:
                self._leadership = Leadership(
                    daemon.manager,
                    daemon.pool,
                    self._leases,
                    wrappers=self._leader_wrappers,
                    event_loop=daemon.event_loop,
                    backoff=(
                        settings.scheduler.error_backoff_initial,
                        settings.scheduler.error_backoff_max,
                    ),
                )
                self._leadership.start()

    def stop(self, grace: float | None = None) -> int:
        """Drain running ticks (up to ``grace``, default ``scheduler.shutdown_grace``),
        release every lease with NOTIFY, stop. Returns the exit code ``run`` would."""
        with self._lock:
            daemon, self._daemon = self._daemon, None
            leadership, self._leadership = self._leadership, None
        if daemon is None:
            return 0
        if leadership is not None:
            # Leader functions stop while their leases are still held: no overlap with the
            # next holder; the daemon then releases every lease.
            leadership.stop(daemon.settings.scheduler.shutdown_grace if grace is None else grace)
        return daemon.stop(grace)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the App must stop (a stop request or a fatal failure); the exit code,
        or None on timeout."""
        daemon = self._daemon
        if daemon is None:
            return 0
        return daemon.wait(timeout)

    def request_stop(self) -> None:
        """Ask a running App to stop (safe from a signal handler or another thread)."""
        daemon = self._daemon
        if daemon is not None:
            daemon.request_stop()

    def limit(self, name: str, scope: str | None = None, *, wait: float = 0.0) -> Decision:
        """Take one event from the cluster-wide rate limit ``limits.<name>`` outside a tick
        (a web handler, say); the same buckets as ``ctx.limit``. The App must be running.

        :raises LeasectlError: the App is not running.
        :raises DatabaseUnavailable: the limit could not be checked (fail closed).
        """
        daemon = self._daemon
        if daemon is None or daemon.limiter is None:
            raise LeasectlError("App.limit() needs a running App: call start() first")
        return daemon.limiter.acquire(name, scope, wait=wait)

    def health(self) -> tuple[bool, str]:
        """(healthy, why): what ``/healthz`` answers (for a host app's own health route)."""
        daemon = self._daemon
        return daemon.health() if daemon is not None else (False, "not running")

    def ready(self) -> tuple[bool, str]:
        """(ready, why): what ``/readyz`` answers."""
        daemon = self._daemon
        return daemon.ready() if daemon is not None else (False, "not running")

    # -- operator control (leasectl.loop_control): the same as `leasectl loop ...` ---------------

    def pause(
        self, name: str, *, reason: str = "", by: str | None = None, now: bool = False
    ) -> None:
        """Pause loop ``name`` on every replica of the cluster until :meth:`resume`
        (``"*"``: every loop). A paused leased loop keeps its lease and starts no tick.

        :param now: also tell a running tick to stop (``ctx.check()`` raises).
        :raises UnknownLoop: the cluster knows no loop of that name (``.known`` lists them).
        """
        with self._control_connection() as conn:
            loop_control.pause(conn, name, by=by or _caller(), reason=reason, now=now)

    def resume(self, name: str, *, at: datetime | None = None, by: str | None = None) -> bool:
        """End the pause of ``name`` now (or at ``at``); False if it was not paused."""
        with self._control_connection() as conn:
            return loop_control.resume(conn, name, by=by or _caller(), at=at) is not None

    def trigger(self, name: str, *, reason: str = "", by: str | None = None) -> int:
        """Run one extra tick of ``name`` as soon as possible: on the lease holder (at most
        once across the cluster), or on every replica for an everywhere loop; the trigger id."""
        with self._control_connection() as conn:
            return loop_control.trigger(conn, name, by=by or _caller(), reason=reason)

    @contextmanager
    def _control_connection(self) -> Iterator[Any]:
        """The running replica's pool, or a connection of its own (the App need not run)."""
        daemon = self._daemon
        pool = daemon.pool if daemon is not None else None
        if pool is not None:
            with pool.connection() as conn:  # committed as the block ends
                yield conn
            return
        settings = self.settings
        with status.connect(status.status_dsn(settings), settings, "app") as conn:
            yield conn

    @property
    def migration_sources(self) -> list[MigrationSource]:
        """The migration folders applied after leasectl's: each included package's
        (``registry.MIGRATIONS``, e.g. the certificate tables), then the App's own
        (``leasectl migrate --app`` applies the same)."""
        included: list[MigrationSource] = []
        for package in self._included:
            source = getattr(_registry(package), "MIGRATIONS", None)
            if isinstance(source, MigrationSource) and source not in included:
                included.append(source)
        return included + list(self._migrations)

    @property
    def included(self) -> list[str]:
        """The loops packages this App includes (``include()``), in order."""
        return list(self._included)

    @property
    def replica_id(self) -> str | None:
        """This replica's id once started."""
        return self._daemon.replica_id if self._daemon is not None else None

    @property
    def running(self) -> bool:
        return self._daemon is not None

    def run(self, *, report_errors: bool = True) -> int:
        """``start()``, wait for SIGTERM/SIGINT (or a fatal failure), ``stop()``; the exit code.

        A second signal exits at once with 130. Must be called from the main thread.

        :param report_errors: a start-up failure (a bad setting, the database, a bug) is told
            on stderr exactly as ``leasectl run`` tells it, and its exit code returned (2;
            1 for an unexpected error); False re-raises it (``leasectl run`` reports it).
        """
        previous = self._install_signals()
        try:
            try:
                settings = self.settings
                if not logging.getLogger().handlers:
                    logs.setup(settings.logging.format, settings.logging.level)
                self.start()
            except Exception as exc:
                if not report_errors:
                    raise
                return _report_start_failure(exc)
            if self._stop_early.is_set():
                self.request_stop()
            # Waited on in slices: the kernel may deliver SIGTERM to any thread, and then the
            # main thread, blocked in a lock acquire with no timeout, is never interrupted to
            # run the Python handler (seen under load: a replica ignored SIGTERM for good).
            code = None
            while code is None:
                code = self.wait(_SIGNAL_CHECK_S)
            return self.stop() if code is None else max(code, self.stop())
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _install_signals(self) -> dict[int, Any]:
        def handler(signum: int, frame: FrameType | None) -> None:
            daemon = self._daemon
            if self._stop_early.is_set():
                log.warning("second signal: exiting now", extra={"action": "forced_exit"})
                os._exit(EXIT_FORCED)
            log.info(
                "signal %s: graceful stop",
                signal.Signals(signum).name,
                extra={"action": "signal"},
            )
            self._stop_early.set()
            if daemon is not None:
                daemon.request_stop()

        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def _refuse_if_started(self, what: str) -> None:
        if self._daemon is not None:
            raise LeasectlError(f"cannot {what} while the App is running")

    def __repr__(self) -> str:
        return f"App(loops={sorted(self._own)}, include={self._included})"


def load_app(target: str) -> App:
    """The App named by ``module:attribute`` (``leasectl run --app``, ``$LEASECTL_APP``).

    :raises ConfigError: the module cannot be imported or the attribute is not an App.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--app: expected MODULE:ATTRIBUTE (e.g. myservice.jobs:app), got {target!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {target}: cannot import {module_name}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(
            f"--app {target}: {module_name}.{attr} is "
            f"{'missing' if app is None else type(app).__name__}, expected a leasectl.App"
        )
    return app


# -- helpers -------------------------------------------------------------------------------


def _caller() -> str:
    """Who an App's control call is audited as: ``app:<OS user>@<host>``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"app:{user}@{socket.gethostname()}"


def _report_start_failure(exc: BaseException) -> int:
    """A user's own script gets ``leasectl run``'s manners (:mod:`leasectl.failures`): the
    same lines on stderr and the same exit code; the traceback only with debug logging."""
    log.debug("cannot start", exc_info=exc, extra={"action": "start_failed"})
    lines, code = describe(exc)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "leasectl"
    print(f"{prog}: {lines[0]}", file=sys.stderr, flush=True)
    for line in lines[1:]:
        print(line, file=sys.stderr, flush=True)
    return code


def _collect_rate_limit_garbage(ctx: TickContext) -> None:
    """Drop buckets that are full again (idle keys); a missing row means the same."""
    if ctx.limiter is not None:
        ctx.count("deleted", ctx.limiter.collect_garbage())


#: Runs on every replica when any ``limits:`` are configured (an idempotent DELETE).
RATE_LIMIT_GC = LoopSpec(
    name="rate_limit_gc",
    interval=60.0,
    placement="everywhere",
    run=_collect_rate_limit_garbage,
    run_on_start=False,
    timeout=30.0,
    description="delete idle rate-limit buckets",
)


def _labels(labels: Iterable[str]) -> tuple[str, ...]:
    return (labels,) if isinstance(labels, str) else tuple(labels)


def _only(kind: str, fn: Callable[[LeaseEvent], None]) -> Callable[[LeaseEvent], None]:
    """A manager listener passing ``fn`` the acquisitions, or the losses and releases."""
    kinds = ("acquired",) if kind == "acquired" else ("lost", "released")

    def listener(event: LeaseEvent) -> None:
        if event.kind in kinds:
            fn(event)

    return listener


def _seconds(value: float | timedelta, what: str, *, zero: bool = False) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0 or (seconds == 0 and not zero):
        raise ConfigError(f"{what} must be {'>=' if zero else '>'} 0 seconds, got {value!r}")
    return seconds


def _migration_source(
    item: str | Path | MigrationSource | tuple[str, str | Path],
) -> MigrationSource:
    if isinstance(item, MigrationSource):
        return item
    if isinstance(item, tuple):
        source, path = item
        return MigrationSource(source, Path(path))
    path = Path(item)
    return MigrationSource(MigrationSource.default_name(path), path)


def _registry(package: str) -> Any:
    try:
        return importlib.import_module(package + ".registry")
    except ImportError as exc:
        raise ConfigError(f"include({package!r}): cannot import {package}.registry: {exc}") from exc


def _package_loops(package: str, settings: Settings) -> tuple[list[LoopSpec], Any]:
    """A loops package's enabled specs and the settings object its ticks see."""
    registry = _registry(package)
    if package == settings.scheduler.loops_package and settings.loops is not None:
        config = settings.loops
    else:
        config = registry.SETTINGS_CLASS()
    specs: list[LoopSpec] = registry.build_loops(config)
    return specs, config
