"""``leasectl demo``: a local cluster of N replicas on the embedded PostgreSQL, watched live.

It starts (or reuses) the embedded server in ``<workdir>/pgdata``, recreates the database
``leasectl_demo``, migrates it, seeds a small real dataset (a local CA, owners, certificates
near expiry, two revocations, pending issuance jobs), starts an SMTP sink and a webhook
receiver, writes ``<workdir>/leasectl.yaml`` with short loop intervals, and starts N
``leasectl run`` replicas, each in its own process group with its own metrics port. Then it
shows the lease status and what the loops did, and says how to kill a holder.

Ctrl-C (or SIGTERM, or the end of ``--duration``) stops everything: SIGTERM to every replica's
process group (graceful hand-over), SIGKILL to any group still alive after the grace, the
sinks, and the embedded server if the demo started it. Replicas also get SIGTERM if the demo
itself dies (``PR_SET_PDEATHSIG``), so nothing is left behind even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import yaml
from rich.console import Console, Group
from rich.text import Text

from leasectl import sql
from leasectl import status as st
from leasectl.config import load as load_config
from leasectl.embedded import EmbeddedPostgres
from leasectl.migrate import migrate
from leasectl.settings import Settings
from leasectl.tools.certs import certs_migrations
from leasectl.tools.demo import view as screen
from leasectl.tools.demo.seed import seed
from leasectl.tools.demo.smtp_sink import SmtpSink
from leasectl.tools.replicas import ReplicaProcess, free_port, pid_alive, run_command, spawn
from leasectl.tools.webhook_sink import WebhookSink

Q = sql.load("demo", package="leasectl.tools.demo")
DB_NAME = "leasectl_demo"
KEY_ENV = "LEASECTL_DEMO_WEBHOOK_KEY"
KEK_ENV = "LEASECTL_DEMO_CA_KEK"  # the demo CA's key-encryption key (loops.ca.kek_env)
SHUTDOWN_GRACE = 5.0

#: Loop intervals for the demo: seconds, so something happens while you watch.
LOOPS_CONFIG: dict[str, Any] = {
    "jobs": {"processor": {"interval": 2}, "retry": {"interval": 10}, "timeout": {"interval": 30}},
    "renewal": {"check": {"interval": 5}},
    "agents": {"check": {"interval": 30}},
    "notifications": {"send": {"interval": 2}, "retry": {"interval": 5}},
    "digest": {"loop": {"enabled": True, "interval": 30}},
    "crl": {"loop": {"interval": 10}},
    "network_scan": {"loop": {"interval": 60}},
    "health_check": {"loop": {"interval": 30}},
    "gc": {
        "short_lived_expiry": {"interval": 10},
        "acme": {"interval": 30},
        "sessions": {"interval": 60},
    },
}


@dataclass
class DemoReplica(ReplicaProcess):
    """One demo replica: its metrics port and its log file."""

    port: int = 0
    log: Path = Path()


class Demo:
    """One demo run. ``run()`` returns the exit code; everything is stopped when it returns."""

    def __init__(
        self,
        replicas: int,
        workdir: Path,
        *,
        duration: float | None = None,
        keep_server: bool = False,
        console: Console | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.n = replicas
        self.workdir = workdir.resolve()
        self.duration = duration
        self.keep_server = keep_server
        self.console = console or (Console() if sys.stdout.isatty() else Console(width=160))
        self.interactive = self.console.is_terminal if interactive is None else interactive
        self.server = EmbeddedPostgres(self.workdir / "pgdata")
        self.started_server = False
        self.replicas: list[DemoReplica] = []
        self.config_path = self.workdir / "leasectl.yaml"
        self.key = secrets.token_hex(16)
        self.kek = secrets.token_urlsafe(32)  # the seeded CA key is stored encrypted under it
        self.smtp: SmtpSink | None = None
        self.webhook: WebhookSink | None = None
        self.dsn = ""
        self.settings: Settings | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        crashed = False
        try:
            self.setup()
            self.start_replicas()
            self.watch()
            crashed = self.all_exited()  # before teardown stops the rest
        except KeyboardInterrupt:
            if not self.interactive and self._last is not None:
                self.console.print(self._last)  # the final state, for logs
            self.console.print("\n[bold]stopping the demo...[/bold]")
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish
            try:
                self.teardown()
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)
        if crashed:
            logs = ", ".join(str(r.log) for r in self.replicas)
            self.console.print(f"[red]every replica exited on its own; see {logs}[/red]")
            return 1
        return 0

    def all_exited(self) -> bool:
        """True when replicas were started and none is running any more."""
        return bool(self.replicas) and all(r.proc.poll() is not None for r in self.replicas)

    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        say = self.console.print
        self.started_server = self.server.info() is None
        say(f"embedded PostgreSQL in {self.server.data_dir} ...")
        info = self.server.ensure_running()
        say(f"  running on 127.0.0.1:{info.port} (pid {info.pid})")
        with psycopg.connect(info.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')  # fixed name
            admin.execute(f'CREATE DATABASE "{DB_NAME}"')
        self.dsn = info.dsn(DB_NAME)
        applied = migrate(self.dsn, sources=[certs_migrations()])
        say(f"  database {DB_NAME}: {len(applied)} migrations applied")
        with psycopg.connect(self.dsn) as conn:
            made = seed(conn, self.kek)
        say(
            f"  seeded a local CA, 3 owners, {made['certificates']} certificates "
            f"({made['versions']} signed, {made['revoked']} revoked), {made['jobs']} issuance jobs"
        )
        # Bound and listening now; served from start_replicas() on, after the forks:
        # preexec_fn (PR_SET_PDEATHSIG) is only safe while the demo has no other threads.
        self.smtp = SmtpSink()
        self.webhook = WebhookSink(self.key.encode(), reject_unverified=True)
        self.webhook.bind()
        say(f"  SMTP sink on 127.0.0.1:{self.smtp.port}, webhook receiver on {self.webhook.url()}")
        self.write_config()
        self.settings = load_config(self.config_path, environ=self.replica_env())
        say(f"  configuration: {self.config_path}")

    def write_config(self) -> None:
        assert self.smtp is not None and self.webhook is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        loops = {k: dict(v) for k, v in LOOPS_CONFIG.items()}
        loops["notifications"] = {
            **loops["notifications"],
            "smtp": {
                "host": "127.0.0.1",
                "port": self.smtp.port,
                "tls": "none",
                "from_address": "leasectl-demo@example.test",
            },
            "webhook": {"url": self.webhook.url(), "hmac_key_env": KEY_ENV},
            # The demo's receivers listen on loopback, which the SSRF guard refuses otherwise.
            "allow_private_networks": ["127.0.0.0/8"],
        }
        loops["ca"] = {"kek_env": KEK_ENV}
        data = {
            "database": {"dsn": self.dsn},
            "scheduler": {"shutdown_grace": SHUTDOWN_GRACE},
            "metrics": {"listen": ""},
            "logging": {"format": "json"},
            "loops": loops,
        }
        header = (
            "# Written by `leasectl demo`: short intervals so the loops act while you watch.\n"
            f"# The webhook HMAC key is passed to the replicas in ${KEY_ENV}, the CA's\n"
            f"# key-encryption key in ${KEK_ENV}.\n"
        )
        self.config_path.write_text(header + yaml.safe_dump(data, sort_keys=False))

    def replica_env(self) -> dict[str, str]:
        """The replicas' environment: the demo's config only, no stray LEASECTL_* overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
        env[KEY_ENV] = self.key
        env[KEK_ENV] = self.kek
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_replicas(self) -> None:
        assert self.smtp is not None and self.webhook is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        env = self.replica_env()
        for i in range(1, self.n + 1):
            rid, port = f"demo-{i}", free_port()
            log = self.workdir / f"{rid}.log"
            cmd = run_command(self.config_path, rid, metrics_listen=f"127.0.0.1:{port}")
            with open(log, "wb") as out:
                # SIGTERM if the demo dies: a graceful hand-over even then.
                proc = spawn(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            self.replicas.append(DemoReplica(rid, proc, port=port, log=log))
            self.console.print(
                f"  started {rid}: pid {proc.pid}, metrics http://127.0.0.1:{port}/metrics, "
                f"log {log}"
            )
        self.smtp.start()
        self.webhook.start()

    def teardown(self) -> None:
        say = self.console.print
        for r in self.replicas:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 10
        for r in self.replicas:
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  {r.replica_id} did not stop in time: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGKILL)  # anything left in its group
            if r.proc.poll() is None:
                r.proc.wait(5)
        if self.replicas:
            codes = ", ".join(f"{r.replica_id} {r.proc.returncode}" for r in self.replicas)
            say(f"  replicas stopped (exit codes: {codes})")
        for sink in (self.smtp, self.webhook):
            if sink is not None:
                sink.stop()
        if self.started_server and not self.keep_server:
            info = self.server.info()
            self.server.stop("fast")
            if info is not None:
                for _ in range(100):
                    if not pid_alive(info.pid):
                        break
                    time.sleep(0.05)
            say("  embedded PostgreSQL stopped")
        left = [r.replica_id for r in self.replicas if pid_alive(r.proc.pid)]
        say("demo stopped; no process left behind" if not left else f"still alive: {left}")

    # -- watching -------------------------------------------------------------------------

    def watch(self) -> None:
        assert self.settings is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        expected, source = st.expected_leases(self.settings)
        started = time.monotonic()
        end = started + self.duration if self.duration else None
        if self.interactive:
            from rich.live import Live

            with Live(Text("reading status..."), console=self.console, auto_refresh=False) as live:
                for view in self.snapshots(expected, source, end):
                    live.update(view, refresh=True)
            return
        self.console.print(self.instructions(None))
        printed = 0.0
        for _ in self.snapshots(expected, source, end):
            if time.monotonic() - printed >= 2.0:
                printed = time.monotonic()
                self.console.print(self.summary_line(printed - started))
        if self._last is not None:
            self.console.print(self._last)

    _last: Any = None
    _status: st.ClusterStatus | None = None

    def snapshots(
        self, expected: list[str] | None, source: str, end: float | None
    ) -> Iterator[Group]:
        conn: psycopg.Connection[Any] | None = None
        try:
            while (end is None or time.monotonic() < end) and not self.all_exited():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                    assert self.settings is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
                    # Events first, the leases after: every acquisition the events table shows
                    # is then in the lease matrix too (read the other way round, the first
                    # frame showed every lease "never acquired" next to its acquisitions).
                    events = conn.execute(Q["recent_events"], {"n": 6}).fetchall()
                    counters = conn.execute(Q["counters"]).fetchone()
                    self._status = st.read_status(
                        conn,
                        namespace=self.settings.leases.namespace,
                        lease_ttl=self.settings.leases.lease_ttl,
                        expected=expected,
                        expected_source=source,
                    )
                    per_loop = {
                        loop: (age, by, int(n))
                        for loop, age, by, n in conn.execute(Q["per_loop"]).fetchall()
                    }
                    self._last = self.view(self._status, counters, events, per_loop)
                except psycopg.Error as exc:
                    conn = None
                    self._last = Text(f"database unavailable: {exc}", style="red")
                yield self._last
                time.sleep(0.5)
        finally:
            if conn is not None:
                conn.close()

    def view(
        self,
        status: st.ClusterStatus,
        counters: Any,
        events: list[Any],
        per_loop: dict[str, tuple[float | None, str | None, int]] | None = None,
    ) -> Group:
        assert self.smtp is not None and self.webhook is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        exited = [
            f"{r.replica_id} (pid {r.proc.pid}) {r.state}"
            for r in self.replicas
            if r.proc.poll() is not None
        ]
        return screen.view(
            status, counters, events, self.smtp.inbox, self.webhook.inbox, exited,
            self.config_path, per_loop,
        )  # fmt: skip

    def instructions(self, status: st.ClusterStatus | None) -> Text:
        return screen.instructions(status, self.config_path)

    def summary_line(self, elapsed: float) -> str:
        assert self.smtp is not None and self.webhook is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        return screen.summary_line(self._status, elapsed, self.smtp.inbox, self.webhook.inbox)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
