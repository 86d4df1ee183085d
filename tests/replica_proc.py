"""A lease-holding replica in its own process, for multi-process tests and the benchmark.

Child side (``python tests/replica_proc.py --dsn ... --id a --leases x,y``): runs a
:class:`LeaseManager` and prints one JSON object per line on stdout:

- ``{"ev": "ready", "pid": ...}`` once the lock connection is up;
- ``{"ev": "acquired" | "lost" | "released" | "evicted", "lease", "epoch", "reason", "mono"}``
  for every lease transition (``mono`` is ``time.monotonic()``, which is CLOCK_MONOTONIC and
  therefore comparable between processes on one Linux host);
- answers to commands read from stdin, one per line:
  ``write <lease> guard`` (``lease.guard(cur)`` then an insert into ``fence_log``),
  ``write <lease> fence_sql`` (an insert fenced only by ``FENCE_SQL``, skipping the local
  validity check, so only the database can refuse it), ``held``, ``stop``.

SIGTERM stops the manager gracefully (release with NOTIFY) and exits 0.

Parent side: :class:`ReplicaProcess` starts the child and collects its events.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

FENCE_LOG_DDL = (
    "CREATE TABLE IF NOT EXISTS fence_log ("
    " id bigserial PRIMARY KEY, lease text NOT NULL, epoch bigint NOT NULL,"
    " replica text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)


# -- child ----------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def child_main(argv: list[str] | None = None) -> int:
    import psycopg

    from leasectl import FENCE_SQL, FencingRejected, LeaseEvent, LeaseLost, LeaseManager
    from leasectl.leases import Lease
    from leasectl.settings import CoreSettings, DatabaseSettings, LeaseSettings

    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--leases", required=True)
    p.add_argument("--acquire-interval", type=float, default=0.5)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--ttl", type=float, default=5.0)
    p.add_argument("--margin", type=float, default=2.0)
    p.add_argument("--grace", type=float, default=2.0)
    p.add_argument("--standby", default="direct", choices=("direct", "pooled"))
    p.add_argument("--work-dsn", default="", help="database.dsn (a pooler); --dsn: the lock DSN")
    args = p.parse_args(argv)
    if os.environ.get("REPLICA_PROC_LOG"):  # diagnostics: the manager's log lines on stderr
        import logging

        logging.basicConfig(
            level=os.environ["REPLICA_PROC_LOG"], format="%(created).3f %(name)s %(message)s"
        )

    settings = CoreSettings(
        database=DatabaseSettings(dsn=args.dsn),
        leases=LeaseSettings(
            acquire_interval=args.acquire_interval,
            heartbeat_interval=args.heartbeat,
            lease_ttl=args.ttl,
            safety_margin=args.margin,
            eviction_grace=args.grace,
            step_down_cooldown=1.0,
            standby=args.standby,
        ),
    )
    names = [n for n in args.leases.split(",") if n]
    manager = LeaseManager(
        args.id, names, settings, dsn=args.work_dsn or args.dsn, lock_dsn=args.dsn
    )
    last: dict[str, Lease] = {}
    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with out_lock:
            _emit(obj)

    def on_event(ev: LeaseEvent) -> None:
        if ev.kind == "heartbeat":
            return
        if ev.kind == "acquired":
            lease = manager.lease(ev.lease)  # the handle the manager just stored
            if lease is not None:
                last[ev.lease] = lease
        emit(
            {
                "ev": ev.kind,
                "lease": ev.lease,
                "epoch": ev.epoch,
                "reason": ev.reason,
                "mono": time.monotonic(),
            }
        )

    manager.add_listener(on_event)
    stopping = threading.Event()
    manager.add_exit_listener(stopping.set)  # a fatal manager ends the wait below at once

    def on_term(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    manager.start()
    emit({"ev": "ready", "pid": os.getpid(), "mono": time.monotonic()})

    def write(name: str, mode: str) -> dict[str, Any]:
        lease = last.get(name)
        if lease is None:
            return {"ev": "write", "lease": name, "result": "never_held"}
        result, msg = "ok", ""
        try:
            with psycopg.connect(args.dsn) as conn, conn.transaction():
                cur = conn.cursor()
                params = {"replica": args.id, **lease.fence_params()}
                if mode == "guard":
                    lease.guard(cur)
                    cur.execute(
                        "INSERT INTO fence_log (lease, epoch, replica)"
                        " VALUES (%(lease_name)s, %(lease_epoch)s, %(replica)s)",
                        params,
                    )
                else:
                    cur.execute(
                        "INSERT INTO fence_log (lease, epoch, replica)"
                        " SELECT %(lease_name)s, %(lease_epoch)s, %(replica)s"
                        " WHERE " + FENCE_SQL,
                        params,
                    )
                    if cur.rowcount != 1:
                        raise FencingRejected(name, lease.epoch, None)
        except (LeaseLost, FencingRejected) as exc:
            result, msg = type(exc).__name__, str(exc)
        return {"ev": "write", "lease": name, "epoch": lease.epoch, "result": result, "msg": msg}

    def commands() -> None:
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "write":
                emit(write(parts[1], parts[2] if len(parts) > 2 else "guard"))
            elif parts[0] == "held":
                held = {n: lease.epoch for n, lease in manager.held().items()}
                emit({"ev": "held", "held": held, "standby": manager.standby})
            elif parts[0] == "stop":
                break
        stopping.set()

    threading.Thread(target=commands, daemon=True).start()
    while not stopping.wait(1.0):  # signal handlers run between waits: no busy polling
        pass
    if manager.fatal is not None:
        emit({"ev": "fatal", "reason": str(manager.fatal)})
        return 1
    manager.stop()
    emit({"ev": "stopped", "mono": time.monotonic()})
    return 0


# -- parent ---------------------------------------------------------------------------------


class ReplicaProcess:
    """A child replica process and the events it has printed so far."""

    def __init__(
        self,
        dsn: str,
        replica_id: str,
        leases: list[str],
        *,
        acquire_interval: float = 0.5,
        heartbeat: float = 1.0,
        ttl: float = 5.0,
        margin: float = 2.0,
        grace: float = 2.0,
        standby: str = "direct",
        work_dsn: str = "",
    ) -> None:
        self.id = replica_id
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--dsn",
            dsn,
            "--id",
            replica_id,
            "--leases",
            ",".join(leases),
            "--acquire-interval",
            str(acquire_interval),
            "--heartbeat",
            str(heartbeat),
            "--ttl",
            str(ttl),
            "--margin",
            str(margin),
            "--grace",
            str(grace),
            "--standby",
            standby,
            "--work-dsn",
            work_dsn,
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.pid = self.proc.pid
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            obj["recv_mono"] = time.monotonic()
            with self._cond:
                self.events.append(obj)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())

    def wait_event(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str = "",
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event at or after position ``start`` matching ``pred``; wait ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[start:]:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"replica {self.id}: no event {what or pred!r} within {timeout}s; "
                        f"exit={self.proc.poll()} events={self.events[-10:]} "
                        f"stderr={self.stderr_lines[-10:]}"
                    )
                self._cond.wait(min(left, 0.05))

    def mark(self) -> int:
        """Position of the next event, for :meth:`wait_event` ``start=``."""
        with self._cond:
            return len(self.events)

    def ready(self, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_event(lambda e: e["ev"] == "ready", timeout, "ready")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def write(self, lease: str, mode: str = "guard", timeout: float = 10.0) -> dict[str, Any]:
        mark = self.mark()
        self.command(f"write {lease} {mode}")
        return self.wait_event(
            lambda e: e["ev"] == "write" and e["lease"] == lease, timeout, "write", start=mark
        )

    def acquired(self, lease: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [
                e
                for e in self.events
                if e["ev"] == "acquired" and (lease is None or e["lease"] == lease)
            ]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(child_main())
