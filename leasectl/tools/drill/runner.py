"""A whole drill: database, sink, replicas, feed, rounds, drain, analysis, clean-up.

Set-up and tear-down live here; one round's logic is in :mod:`leasectl.tools.drill.rounds`, the
checks in :mod:`leasectl.tools.drill.invariants`. Clean-up runs whatever happened (Ctrl-C too):
replicas are SIGCONTed and stopped, the sink closed, namespaces deleted, and an embedded
server the drill started is stopped.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import conninfo

from leasectl.embedded import EmbeddedPostgres
from leasectl.locks import TcpBound
from leasectl.migrate import migrate
from leasectl.settings import DatabaseSettings, LeaseSettings
from leasectl.tools.certs import certs_migrations
from leasectl.tools.drill import delivery, faults, liveness, netns, pooler, target, wedge
from leasectl.tools.drill.cluster import Cluster, LogLine
from leasectl.tools.drill.feed import Feed
from leasectl.tools.drill.invariants import Analysis, analyze
from leasectl.tools.drill.join import JoinRounds
from leasectl.tools.drill.rounds import RoundResult, RoundRunner, Timing
from leasectl.tools.drill.settle import QUIET_S, Settle
from leasectl.tools.drill.standby import PgNode, ReplicatedPair
from leasectl.tools.webhook_sink import Delivery, WebhookSink

#: Loops the replicas run. The leased ones are the side effects under test; job_* run
#: everywhere (jobs must not be lost when a replica dies mid-job).
LOOPS = (
    "notification_send",
    "notification_retry",
    "crl_generation",
    "job_processor",
    "job_retry",
    "job_timeout",
)


@dataclass
class DrillOptions:
    replicas: int = 3
    faults: list[str] = field(default_factory=lambda: ["graceful", "kill", "stop", "terminate"])
    rounds: int = 20
    dsn: str | None = None  # None: the embedded server in data_dir
    data_dir: Path | None = None  # None: a temporary directory, removed afterwards
    lease: str = "notification_send"
    notifications_per_s: float = 5.0
    jobs_per_s: float = 2.0
    settle_s: float = 1.0
    drain_timeout: float = 120.0
    crash_window_s: float = 1.0
    workdir: Path | None = None
    config: Path | None = None  # the replicas' base configuration (lease timing, TCP, ...)
    replication: str = "async"  # db-failover: the standby is "async" or "sync" (remote_apply)
    storm_s: float = 5.0  # backend-kill-storm: how long it lasts
    storm_per_s: float = 5.0  # backend-kill-storm: backends terminated per second
    app: str | None = None  # MODULE:ATTR: the replicas run this App (None: the shipped loops)


@dataclass
class DrillResult:
    options: DrillOptions
    skipped: dict[str, str]
    rounds: list[RoundResult]
    analysis: Analysis
    started: float
    finished: float
    replicas: list[dict[str, Any]]
    lines: list[LogLine]
    deliveries: list[Delivery] = field(default_factory=list)
    inserted_at: dict[str, float] = field(default_factory=dict)  # feed row id -> acknowledged
    interrupted: bool = False
    setup_notes: list[str] = field(default_factory=list)


Progress = Callable[[int, int, RoundResult | None, str], None]


def _skip_reasons(opts: DrillOptions) -> dict[str, str]:
    skipped: dict[str, str] = {}
    if "partition" in opts.faults:
        ok, why = netns.available()
        if not ok:
            skipped["partition"] = why
        elif opts.dsn:
            skipped["partition"] = (
                "needs the embedded server (it must listen on the host end of the drill's veth "
                "pairs); run without --dsn"
            )
    if "db-restart" in opts.faults and opts.dsn:
        skipped["db-restart"] = "the drill restarts only the embedded server; run without --dsn"
    if "db-failover" in opts.faults and opts.dsn:
        skipped["db-failover"] = (
            "the drill fails over only its own embedded primary and standby; run without --dsn"
        )
    if "pooler-restart" in opts.faults:
        if pooler.binary() is None:
            skipped["pooler-restart"] = "pgbouncer not found (Debian: apt-get install pgbouncer)"
        elif opts.dsn:
            skipped["pooler-restart"] = "the drill starts its own PgBouncer; run without --dsn"
        elif "db-failover" in opts.faults:
            skipped["pooler-restart"] = (
                "not combined with db-failover: PgBouncer cannot follow a promotion by itself "
                "(no target_session_attrs); run it in a drill of its own"
            )
    return skipped


def _placement_skip(opts: DrillOptions, placement: str) -> dict[str, str]:
    if "join" in opts.faults and placement != "spread":
        return {"join": f"leases.placement is {placement}: a joining replica is given nothing"}
    return {}


def _with_db(dsn: str, dbname: str, host: str | None = None) -> str:
    params: dict[str, Any] = dict(conninfo.conninfo_to_dict(dsn))
    params["dbname"] = dbname
    if host is not None:
        params["host"] = host
    return conninfo.make_conninfo(**params)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins, recursively."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def replica_config(base: dict[str, Any], drill: dict[str, Any]) -> dict[str, Any]:
    """The base config with the drill's settings on top; its DSNs dropped (--dsn decides)."""
    out = _merge(base, drill)
    if isinstance(out.get("database"), dict):
        dropped = ("dsn", "lock_dsn", "dsn_env", "dsn_file", "lock_dsn_env", "lock_dsn_file")
        out["database"] = {k: v for k, v in out["database"].items() if k not in dropped}
    return out


class Drill:
    def __init__(self, opts: DrillOptions, progress: Progress | None = None) -> None:
        self.opts = opts
        self.progress = progress or (lambda *a: None)
        self.run_id = f"{int(time.time()) % 100000:05d}{secrets.token_hex(2)}"
        self.skipped = _skip_reasons(opts)
        self.kinds = [k for k in opts.faults if k not in self.skipped]
        self.lease_settings = LeaseSettings()
        db = DatabaseSettings()
        self.base_config: dict[str, Any] = {}
        if opts.config is not None:
            from leasectl.config import load_settings

            loaded = load_settings(str(opts.config))  # validates; ConfigError names the key
            self.lease_settings, db = loaded.leases, loaded.database
            self.base_config = yaml.safe_load(opts.config.read_text()) or {}
        bound = TcpBound(
            db.tcp_keepalives_idle,
            db.tcp_keepalives_interval,
            db.tcp_keepalives_count,
            db.tcp_user_timeout_ms,
            unix_socket=False,
        )
        self.d_srv: float = bound.d_srv or 9.0
        self.skipped.update(_placement_skip(opts, self.lease_settings.placement))
        self.kinds = [k for k in opts.faults if k not in self.skipped]
        self._saved_env: dict[str, str | None] = {}
        self._wedge: wedge.WedgeRounds | None = None
        self.notes: list[str] = []
        self.interrupted = False
        self._tmp: Path | None = None
        self._nets: netns.NetnsSet | None = None
        self._server: EmbeddedPostgres | None = None
        self._pair: ReplicatedPair | None = None
        self._bouncer: pooler.PgBouncer | None = None
        self._sink: WebhookSink | None = None
        self._feed: Feed | None = None
        self._drain_watch: delivery.DrainWatch | None = None
        self._cluster: Cluster | None = None

    # -- set-up -------------------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self.opts.workdir is not None:
            self.opts.workdir.mkdir(parents=True, exist_ok=True)
            return self.opts.workdir
        self._tmp = Path(tempfile.mkdtemp(prefix="leasectl-drill-"))
        os.chmod(self._tmp, 0o755)  # noqa: S103 - the embedded server's user must reach its data dir
        return self._tmp

    def _database(self, work: Path) -> tuple[str, Callable[[int], str]]:
        """(admin DSN of the drill database, DSN per replica slot)."""
        if self.opts.dsn:
            dsn = self.opts.dsn
            return dsn, lambda slot: dsn
        listen = ["127.0.0.1"] + (self._nets.host_addrs if self._nets else [])
        hba = [self._nets.hba_line] if self._nets else []
        data_dir = self.opts.data_dir or work / "pgdata"
        self._server = EmbeddedPostgres(data_dir, listen=listen, extra_hba=hba)
        if self._server.info() is not None:
            self._server.restart()  # apply this drill's listen addresses and pg_hba lines
        info = self._server.ensure_running()
        dbname = f"drill_{self.run_id}"
        with psycopg.connect(info.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')  # name generated, not user input
        admin = _with_db(info.dsn(), dbname)
        nets = self._nets
        if "db-failover" in self.kinds:
            primary = PgNode(data_dir, info.port, tuple(listen))
            self._pair = pair = ReplicatedPair(
                primary, data_dir.parent, synchronous=self.opts.replication == "sync"
            )
            self.notes.append(
                f"{self.opts.replication} streaming standby on port {pair.standby.port}; "
                f"replicas use {pair.dsn(dbname)}"
            )
            admin = pair.dsn(dbname)
            if nets is None:
                return admin, lambda slot: admin
            return admin, lambda slot: pair.dsn(dbname, nets.namespaces[slot].host_addr)
        if nets is None:
            return admin, lambda slot: admin
        return admin, lambda slot: _with_db(admin, dbname, host=nets.namespaces[slot].host_addr)

    def _config(
        self, work: Path, slot: int, url: str, hmac_key: str, lock_dsn: str | None = None
    ) -> Path:
        sched: dict[str, Any] = {"shutdown_grace": 10.0}
        if "wedge" in self.kinds:  # the watchdog's grace, down from 30 s: rounds stay short
            sched["wedge_grace"] = wedge.WEDGE_GRACE
        doc = {
            "scheduler": sched,
            "logging": {"format": "json", "level": "INFO"},
            "loops": {
                "jobs": {
                    "processor": {"interval": 1.0},
                    "retry": {"interval": 2.0},
                    "timeout": {"interval": 2.0},
                    "running_timeout": 20.0,
                    "retry_backoff_base": 1.0,
                    "retry_backoff_max": 2.0,
                },
                "notifications": {
                    "send": {"interval": 1.0},
                    "retry": {"interval": 2.0},
                    "backoff_minutes": [0.02, 0.02, 0.02, 0.02],
                    "webhook": {"url": url, "hmac_key": hmac_key, "timeout": 3.0},
                    # the sink listens on loopback / the drill's veth subnet (netns.py)
                    "allow_private_networks": ["127.0.0.0/8", "10.213.0.0/16"],
                },
                "crl": {"loop": {"interval": 2.0}},
                # the drill's local CA key is generated by the first job, stored encrypted
                "ca": {"kek_file": str(self._kek_file(work))},
            },
        }
        path = work / f"replica-{slot}.yaml"
        config = replica_config(self.base_config, doc)
        if lock_dsn is not None:  # work through the pooler, locks direct
            config.setdefault("database", {})["lock_dsn"] = lock_dsn
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _kek_file(self, work: Path) -> Path:
        path = work / "ca-kek"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> DrillResult:
        started = time.time()
        rounds: list[RoundResult] = []
        try:
            work = self._workdir()
            if "partition" in self.kinds:
                netns.cleanup_stale()
                self._nets = netns.NetnsSet(self._slots())
                self._nets.create()
            admin, direct_for = self._database(work)
            migrate(admin, sources=[certs_migrations()])
            if "wedge" in self.kinds:
                wedge.prepare(admin)
                self._wedge = wedge.WedgeRounds(work / "wedge")
            hmac_key = secrets.token_hex(16)
            addrs = ["127.0.0.1"] + (self._nets.host_addrs if self._nets else [])
            dsn_for, lock_for = direct_for, None
            if "pooler-restart" in self.kinds:
                self._bouncer = bouncer = pooler.PgBouncer(work, admin, addrs)
                bouncer.start()
                hosts = [ns.host_addr for ns in self._nets.namespaces] if self._nets else None

                def dsn_for(slot: int) -> str:
                    return bouncer.dsn(hosts[slot] if hosts else "127.0.0.1")

                lock_for = direct_for
                self.notes.append(f"work pools through PgBouncer {bouncer.dsn()}, locks direct")
            self._sink = WebhookSink(hmac_key.encode(), addrs)
            self._sink.start()
            nets = self._nets
            sink = self._sink

            def url_for(slot: int) -> str:
                return sink.url(nets.namespaces[slot].host_addr if nets else "127.0.0.1")

            configs = {
                s: self._config(work, s, url_for(s), hmac_key, lock_for(s) if lock_for else None)
                for s in range(self._slots())
            }
            tgt = target.resolve(self.opts.app, configs[0], wedge="wedge" in self.kinds)
            if tgt.has("notification_send"):
                self._drain_watch = delivery.DrainWatch(self._notification_bounds(configs[0]))
            self.opts.lease = tgt.default_lease(self.opts.lease)
            self._set_env(tgt.replica_env(work / "wedge" if self._wedge else None))
            self._cluster = cluster = Cluster(
                prefix=f"d{self.run_id}",
                config_for=lambda s: configs[s],
                dsn_for=dsn_for,
                namespaces=self._nets.namespaces if self._nets else None,
                loops=tgt.only,
                workdir=work,
            )
            for slot in range(self.opts.replicas):
                cluster.start(slot)
            self._feed = Feed(
                admin,
                self.run_id,
                notifications_per_s=self.opts.notifications_per_s
                if tgt.has("notification_send")
                else 0.0,
                jobs_per_s=self.opts.jobs_per_s if tgt.has("job_processor") else 0.0,
                revocations_per_s=0.5 if tgt.has("crl_generation") else 0.0,
            )
            if any(tgt.has(loop) for loop in set(target.DOMAIN_CHECKS.values())):
                self._feed.start()
            runner = RoundRunner(
                cluster,
                lease=self.opts.lease,
                timing=Timing(self.lease_settings.lease_ttl, self.d_srv),
                admin_dsn=admin,
                restart_server=self._restart_server if self._server else None,
                failover=self._pair.failover if self._pair else None,
                after_failover=self._pair.rebuild_standby if self._pair else None,
                restart_pooler=self._bouncer.restart if self._bouncer else None,
                storm=lambda: faults.kill_storm(
                    admin,
                    f"d{self.run_id}",
                    duration=self.opts.storm_s,
                    per_s=self.opts.storm_per_s,
                    rng=random.Random(),  # noqa: S311 - picks backends to kill; nothing secret
                ),
                custom=self._custom_rounds(tgt),
                settle=self._settle(cluster, admin, tgt),
            )
            self._wait_started(cluster, 90.0)
            cluster_up = time.time()
            plan = faults.schedule(self.kinds, self.opts.rounds)
            self.progress(0, len(plan), None, "cluster up")
            try:
                for i, kind in enumerate(plan):
                    try:
                        result = runner.run(i, kind)
                    except (TimeoutError, faults.FaultError, psycopg.Error) as exc:
                        # The cluster cannot be driven any more (no holder, no lock
                        # connection): record it, stop injecting, still check and report.
                        result = RoundResult(i, kind, self.opts.lease, "", None, time.time())
                        result.notes.append(f"round aborted: {exc}")
                        result.notes += self._exit_reasons(cluster)
                        rounds.append(result)
                        self.notes.append(f"rounds stopped at #{i}: {exc}")
                        self.progress(i + 1, len(plan), result, kind)
                        break
                    rounds.append(result)
                    self._restore(cluster, result)
                    self.progress(i + 1, len(plan), result, kind)
            except KeyboardInterrupt:
                # First Ctrl-C: stop injecting faults, but report what was measured.
                self.interrupted = True
                self.notes.append(f"interrupted after {len(rounds)} round(s)")
            self._feed.stop()
            self.progress(len(rounds), len(plan), None, "draining")
            self._drain(
                admin,
                20.0 if self.interrupted else self.opts.drain_timeout,
                lambda what: self.progress(len(rounds), len(plan), None, what),
            )
            stopping = time.time()
            cluster.stop_all()
            finished = time.time()
            lines = cluster.snapshot()
            analysis = analyze(
                admin_dsn=admin,
                feed=self._feed,
                deliveries=sink.deliveries(),
                lines=lines,
                rounds=rounds,
                caps=runner.caps,
                process_ends=cluster.process_ends(),
                run_end=finished,
                lease_ttl=self.lease_settings.lease_ttl,
                crash_window_s=self.opts.crash_window_s,
                leased_loops=tgt.leased,
                same_clock=self._server is not None,
                replication=self.opts.replication if self._pair else None,
                still_due=self._drain_watch.still_due(time.monotonic())
                if self._drain_watch is not None
                else (),
                cluster_up=cluster_up,
            )
            self._liveness(analysis, admin, rounds, tgt, started, finished, lines, stopping)
            return DrillResult(
                options=self.opts,
                skipped=self.skipped,
                rounds=rounds,
                analysis=analysis,
                started=started,
                finished=finished,
                replicas=cluster.describe(),
                lines=cluster.snapshot(),
                deliveries=sink.deliveries(),
                inserted_at=dict(self._feed.inserted_at),
                setup_notes=self.notes,
                interrupted=self.interrupted,
            )
        finally:
            self.cleanup()

    @staticmethod
    def _notification_bounds(config: Path) -> delivery.Bounds:
        """The notification loops' timing as the replicas load it (file and LEASECTL_*)."""
        from leasectl.certs.settings import LoopsSettings
        from leasectl.config import load

        loops = load(str(config), environ=os.environ).loops
        ns = loops.notifications if isinstance(loops, LoopsSettings) else None
        return delivery.Bounds.from_settings(ns or LoopsSettings().notifications)

    def _slots(self) -> int:
        """Replica slots to prepare: one more than the cluster for join rounds."""
        return self.opts.replicas + (1 if "join" in self.kinds else 0)

    def _settle(
        self, cluster: Cluster, admin: str, tgt: target.Target
    ) -> Callable[[], float | None]:
        """Waits (at most 30 s) until every leased loop is on its placed replica, none moving."""
        s = Settle(
            tgt.leased,
            namespace=self.lease_settings.namespace,
            lease_ttl=self.lease_settings.lease_ttl,
        )
        return lambda: s.wait(cluster, admin, time.time() - QUIET_S, deadline_s=30.0)

    def _custom_rounds(self, tgt: target.Target) -> dict[str, Callable[[RoundRunner, int], Any]]:
        out: dict[str, Callable[[RoundRunner, int], Any]] = {}
        if self._wedge is not None:
            out["wedge"] = self._wedge.run
        if "join" in self.kinds:
            out["join"] = JoinRounds(
                self.opts.replicas,
                tgt.leased,
                namespace=self.lease_settings.namespace,
                lease_ttl=self.lease_settings.lease_ttl,
            ).run
        return out

    def _set_env(self, env: dict[str, str | None]) -> None:
        """The replicas inherit the drill's environment: set theirs (restored at clean-up)."""
        for key, value in list(env.items()):
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _liveness(
        self,
        analysis: Analysis,
        admin: str,
        rounds: list[RoundResult],
        tgt: target.Target,
        started: float,
        finished: float,
        lines: Sequence[LogLine] = (),
        stopping: float | None = None,
    ) -> None:
        """Add the liveness check; drop the domain checks the App's loops cannot back."""
        check, per_loop = liveness.check(
            admin_dsn=admin,
            rounds=rounds,
            holdings=analysis.holdings,
            policies=tgt.policies(),
            since=started,
            run_end=finished,
            backoff_max=300.0,
            lines=lines,
            stopping=stopping,
        )
        analysis.checks.append(check)
        analysis.liveness = liveness.to_json(per_loop)
        analysis.skipped_checks = dict(tgt.skipped_checks)
        analysis.checks = [c for c in analysis.checks if c.name not in tgt.skipped_checks]

    def _restart_server(self) -> float:
        assert self._server is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        if self._pair is not None:
            return self._pair.restart_primary()
        self._server.stop("fast")
        self._server.ensure_running()
        return time.time()

    def _wait_started(self, cluster: Cluster, timeout: float) -> None:
        n = self.opts.replicas

        def started(line: LogLine) -> bool:
            return line.action == "daemon_started"

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = {ln.replica for ln in cluster.snapshot() if started(ln)}
            if len(up) >= n and self.opts.lease in cluster.holders():
                return
            for rep in cluster.replicas.values():
                if not rep.alive():
                    raise RuntimeError(cluster.failure_text(rep))
            time.sleep(0.1)
        raise TimeoutError(f"cluster of {n} replicas did not start within {timeout}s")

    @staticmethod
    def _exit_reasons(cluster: Cluster) -> list[str]:
        """The last stderr lines of replicas that exited on their own (why they died)."""
        out = []
        for rep in cluster.slots.values():
            if not rep.alive() and not rep.stopped_by_drill:
                tail = " | ".join(line.strip() for line in rep.raw_tail[-3:])
                out.append(f"{rep.replica_id} exit {rep.proc.returncode}: {tail}")
        return out

    def _restore(self, cluster: Cluster, result: RoundResult) -> None:
        """Bring the cluster back to N live replicas and let it settle."""
        for slot, rep in list(cluster.slots.items()):
            if not rep.alive():
                if not rep.stopped_by_drill:
                    tail = " | ".join(line.strip() for line in rep.raw_tail[-3:])
                    result.notes.append(
                        f"replica {rep.replica_id} exited unexpectedly "
                        f"({rep.proc.returncode}): {tail}"
                    )
                cluster.start(slot)
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            live = [r for r in cluster.slots.values() if r.alive()]
            ready = {ln.replica for ln in cluster.snapshot() if ln.action == "daemon_started"}
            settled = len(live) == self.opts.replicas and all(r.replica_id in ready for r in live)
            if settled and self.opts.lease in cluster.holders():
                break
            time.sleep(0.1)
        else:
            result.notes.append("cluster did not settle within 60s after the round")
        time.sleep(self.opts.settle_s)

    def _drain(self, admin: str, timeout: float, progress: Callable[[str], None]) -> None:
        """Wait until the feed's rows are final, or nothing more is worth waiting for.

        Jobs get ``timeout``. Each open notification the loops will still deliver is waited
        for until its own bound has passed (:class:`delivery.DrainWatch`), however long the
        drill's ``drain_timeout``; an interrupted drill waits ``timeout`` for everything.
        """
        from leasectl.tools.drill.invariants import open_counts

        assert self._feed is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        watch, prefix = self._drain_watch, self._feed.prefix
        start = time.monotonic()
        jobs_until = start + timeout
        cap = start + (timeout if self.interrupted or watch is None else watch.bounds.cap())
        shown = 0.0
        while True:
            now = time.monotonic()
            notes = delivery.read_open(admin, prefix) if watch is not None else []
            _n, j_open = open_counts(admin, prefix)
            if notes is None or j_open < 0:  # the server is away: keep trying for a while
                if now >= jobs_until:
                    break
                time.sleep(0.5)
                continue
            wait = watch.update(notes, now) if watch is not None else None
            if not notes and j_open == 0:
                return
            if (wait is None and (j_open == 0 or now >= jobs_until)) or now >= cap:
                break
            if now - shown >= 2.0:
                shown = now
                progress(
                    f"draining: {len(notes)} notification(s) still due (bound in "
                    f"{wait or 0:.0f}s), {j_open} job(s) open ({max(0, jobs_until - now):.0f}s)"
                )
            time.sleep(0.5)
        left = [] if watch is None else watch.overdue(time.monotonic())
        self.notes.append(
            f"drain ended after {time.monotonic() - start:.0f}s with open rows"
            + (f"; {len(left)} notification(s) past their delivery bound" if left else "")
        )

    # -- clean-up -----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Undo everything; a second Ctrl-C must not interrupt it half-way (bounded waits)."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            previous = {
                s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                self._cleanup()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        else:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._wedge is not None:
            self._wedge.lift_all()  # a stuck tick would hold its replica's drain up
        if self._feed is not None:
            self._feed.stop()
        if self._cluster is not None:
            self._cluster.stop_all()
        if self._sink is not None:
            self._sink.stop()
        if self._bouncer is not None:
            self._bouncer.stop()
        if self._nets is not None:
            self._nets.destroy()
        if self._pair is not None:
            self._pair.stop()
        if self._server is not None:
            self._server.stop("fast")
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._set_env(self._saved_env)
