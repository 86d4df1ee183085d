"""The replicas under test: real ``leasectl run`` processes whose JSON logs are read live.

Each process gets a unique replica id (``<prefix>-r<slot>-<generation>``), so a restarted
slot is a new process in every log and in ``pg_stat_activity``
(``application_name = leasectl/<replica-id>``). Every stderr line is parsed as JSON; lines
that are not JSON (a traceback at start) are kept as text for the error message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leasectl.tools.drill.netns import NetNamespace
from leasectl.tools.replicas import ReplicaProcess, run_command, spawn


@dataclass(frozen=True)
class LogLine:
    """One JSON log line of one replica process, with the fields the drill uses."""

    ts: float
    replica: str
    action: str
    lease: str | None = None
    epoch: int | None = None
    reason: str = ""
    loop: str | None = None
    outcome: str | None = None
    tick_at: str | None = None
    msg: str = ""

    @classmethod
    def parse(cls, replica: str, text: str) -> LogLine | None:
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        epoch = doc.get("epoch")
        return cls(
            ts=float(doc.get("ts") or time.time()),
            replica=replica,
            action=str(doc.get("action") or ""),
            lease=doc.get("lease"),
            epoch=int(epoch) if isinstance(epoch, int | str) and str(epoch).isdigit() else None,
            reason=str(doc.get("reason") or ""),
            loop=doc.get("loop"),
            outcome=doc.get("outcome"),
            tick_at=doc.get("tick_at"),
            msg=str(doc.get("msg") or ""),
        )


@dataclass
class Replica(ReplicaProcess):
    """One ``leasectl run`` process of the drill, in its slot (and network namespace)."""

    slot: int = 0
    netns: NetNamespace | None = None
    started: float = 0.0
    ended: float | None = None
    stopped_by_drill: str = ""  # graceful | kill | ... when the drill ended it on purpose
    raw_tail: list[str] = field(default_factory=list)


class Cluster:
    """Starts, watches and restarts the replica processes of one drill."""

    def __init__(
        self,
        *,
        prefix: str,
        config_for: Callable[[int], Path],
        dsn_for: Callable[[int], str],
        namespaces: Sequence[NetNamespace] | None,
        loops: Sequence[str],
        workdir: Path,
        on_line: Callable[[LogLine], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self.config_for = config_for
        self.dsn_for = dsn_for
        self.namespaces = list(namespaces) if namespaces else None
        self.loops = list(loops)
        self.workdir = workdir
        self.on_line = on_line
        self.lines: list[LogLine] = []
        self.replicas: dict[str, Replica] = {}
        self.slots: dict[int, Replica] = {}
        self._generation: dict[int, int] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._readers: list[threading.Thread] = []

    # -- processes --------------------------------------------------------------------------

    def command(self, slot: int, replica_id: str) -> list[str]:
        cmd = run_command(
            self.config_for(slot), replica_id, dsn=self.dsn_for(slot), only=self.loops
        )
        if self.namespaces is not None:
            cmd = self.namespaces[slot].exec_prefix() + cmd
        return cmd

    def next_generation(self, slot: int) -> int:
        return self._generation.get(slot, 0) + 1

    def replica_id(self, slot: int, generation: int) -> str:
        return f"{self.prefix}-r{slot}-{generation}"

    def start(self, slot: int, generation: int | None = None) -> Replica:
        """Start slot ``slot`` (its next generation, or ``generation``: a join picks its id)."""
        gen = max(generation or 0, self.next_generation(slot))
        self._generation[slot] = gen
        replica_id = self.replica_id(slot, gen)
        env = dict(os.environ)
        for key in ("LEASECTL_DSN", "LEASECTL_LOCK_DSN", "LEASECTL_CONFIG"):
            env.pop(key, None)
        env["PYTHONUNBUFFERED"] = "1"
        proc = spawn(
            self.command(slot, replica_id),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            death_signal=signal.SIGKILL,  # no replica outlives the drill, even SIGKILLed
            cwd=self.workdir,
        )
        rep = Replica(
            slot=slot,
            replica_id=replica_id,
            proc=proc,
            netns=self.namespaces[slot] if self.namespaces is not None else None,
            started=time.time(),
        )
        with self._lock:
            self.replicas[replica_id] = rep
            self.slots[slot] = rep
        reader = threading.Thread(
            target=self._read, args=(rep,), name=f"drill-log-{replica_id}", daemon=True
        )
        reader.start()
        self._readers.append(reader)
        return rep

    def _read(self, rep: Replica) -> None:
        assert rep.proc.stderr is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        for raw in rep.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            line = LogLine.parse(rep.replica_id, text)
            with self._cond:
                if line is None:
                    rep.raw_tail = (rep.raw_tail + [text])[-40:]
                    continue
                self.lines.append(line)
                self._cond.notify_all()
            if self.on_line is not None:
                self.on_line(line)
        rep.proc.wait()
        with self._cond:
            rep.ended = rep.ended or time.time()
            self._cond.notify_all()

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every live replica (SIGCONT first, in case one is stopped), then SIGKILL."""
        live = [r for r in self.replicas.values() if r.alive()]
        for rep in live:
            rep.signal(signal.SIGCONT)
            rep.stopped_by_drill = rep.stopped_by_drill or "end"
            rep.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for rep in live:
            try:
                rep.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rep.signal(signal.SIGKILL)
                rep.proc.wait(5.0)
            rep.ended = rep.ended or time.time()
        for reader in self._readers:
            reader.join(5.0)

    # -- waiting on logs -----------------------------------------------------------------------

    def wait_line(
        self, predicate: Callable[[LogLine], bool], *, since: float, timeout: float
    ) -> LogLine | None:
        """The first line at or after ``since`` (log time) matching, or None at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            scanned = 0
            while True:
                for line in self.lines[scanned:]:
                    if line.ts >= since and predicate(line):
                        return line
                scanned = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.2))

    def snapshot(self) -> list[LogLine]:
        with self._lock:
            return list(self.lines)

    def holders(self) -> dict[str, tuple[str, int | None]]:
        """lease -> (replica, epoch) believed held now, from the logs so far."""
        held: dict[str, tuple[str, int | None]] = {}
        for line in self.snapshot():
            if line.lease is None:
                continue
            if line.action == "lease_acquired":
                held[line.lease] = (line.replica, line.epoch)
            elif (
                line.action in ("lease_released", "lease_lost")
                and held.get(line.lease, ("", None))[0] == line.replica
            ):
                held.pop(line.lease)
        for lease, (replica, _) in list(held.items()):
            rep = self.replicas.get(replica)
            if rep is not None and not rep.alive():
                held.pop(lease)
        return held

    def failure_text(self, rep: Replica) -> str:
        tail = "\n".join(rep.raw_tail[-15:])
        return f"replica {rep.replica_id} exited with {rep.proc.returncode}:\n{tail}"

    def process_ends(self) -> dict[str, float]:
        return {r.replica_id: r.ended for r in self.replicas.values() if r.ended is not None}

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": r.replica_id,
                "slot": r.slot,
                "pid": r.pid,
                "netns": r.netns.name if r.netns else None,
                "started": r.started,
                "ended": r.ended,
                "exit": r.proc.returncode,
                "stopped_by_drill": r.stopped_by_drill,
            }
            for r in self.replicas.values()
        ]
