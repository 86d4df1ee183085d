"""One launcher for the ``leasectl run`` processes the demo and the drill start.

A replica runs in its own session (process group), so the terminal's Ctrl-C reaches only the
tool, which then stops the replicas in order; and it gets a signal from the kernel when the
tool dies (``PR_SET_PDEATHSIG``), so no replica outlives the tool, even after ``kill -9``.
The replica is started as ``python -m leasectl.cli run``: a process, not an import, so the
tools stay below the CLI in the import graph.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
try:  # loaded in the parent: the child of fork() must not import or load anything
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when its parent dies (Linux; else a no-op)."""

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def run_command(
    config: Path,
    replica_id: str,
    *,
    metrics_listen: str = "",
    dsn: str | None = None,
    only: Sequence[str] = (),
) -> list[str]:
    """The argv of one ``leasectl run`` replica that logs JSON (the tools parse its logs)."""
    cmd = [sys.executable, "-m", "leasectl.cli", "run", "--config", str(config)]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    cmd += ["--replica-id", replica_id]
    if only:
        cmd += ["--only", ",".join(only)]
    return cmd + ["--log-format", "json", "--metrics-listen", metrics_listen]


def spawn(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    death_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, signalled with ``death_signal`` if we die."""
    return subprocess.Popen(  # noqa: S603 - our own leasectl command line, no shell
        list(cmd),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=str(cwd) if cwd is not None else None,
        start_new_session=True,  # the terminal's Ctrl-C reaches the tool, which stops them
        preexec_fn=die_with_parent(death_signal),
    )


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a replica's metrics endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ReplicaProcess:
    """One started replica: its id and its process (the tools add what they track)."""

    replica_id: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    @property
    def state(self) -> str:
        rc = self.proc.poll()
        return "running" if rc is None else f"exited ({rc})"
