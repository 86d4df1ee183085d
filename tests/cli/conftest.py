"""A real cluster for CLI tests: ``leasectl run`` replica subprocesses on a fresh database.

Every process is started in its own session (process group) and the whole group is killed at
the end of the test, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until

LEASECTL = str(REPO / ".venv" / "bin" / "leasectl")
LEASES = ("alpha", "beta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(config: Path | None = None, /, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: repo on the path, no stray LEASECTL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env["PYTHONPATH"] = str(REPO)
    env["COLUMNS"] = "200"
    if config is not None:
        env["LEASECTL_CONFIG"] = str(config)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEASECTL, *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Replica:
    id: str
    port: int
    proc: subprocess.Popen[str]
    log: Path

    def metrics_url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Cluster:
    dsn: str
    config: Path
    env: dict[str, str]
    tmp: Path
    replicas: dict[str, Replica] = field(default_factory=dict)

    def start(self, replica_id: str) -> Replica:
        port = free_port()
        log = self.tmp / f"{replica_id}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    LEASECTL,
                    "run",
                    "--replica-id",
                    replica_id,
                    "--log-format",
                    "json",
                    "--metrics-listen",
                    f"127.0.0.1:{port}",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                start_new_session=True,
            )
        replica = Replica(replica_id, port, proc, log)
        self.replicas[replica_id] = replica
        return replica

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, input=input)

    def status(self) -> dict[str, Any]:
        res = self.cli("status", "--json")
        assert res.returncode in (0, 1), res.stderr
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def holders(self) -> dict[str, tuple[str | None, int | None]]:
        """``{lease: (holder, epoch)}`` for held leases."""
        return {
            le["name"]: (le["holder"], le["epoch"])
            for le in self.status()["leases"]
            if le["state"] == "held"
        }

    def wait_all_held(self, timeout: float = 20.0) -> dict[str, tuple[str | None, int | None]]:
        def check() -> Any:
            held = self.holders()
            return held if set(held) >= set(LEASES) else None

        result: dict[str, tuple[str | None, int | None]] = wait_until(
            check, timeout=timeout, interval=0.2, what="every lease held"
        )
        return result

    def wait_settled(self, timeout: float = 30.0) -> dict[str, tuple[str | None, int | None]]:
        """Every lease held by the replica placement puts it on, with every started replica
        live: then nothing moves by itself (a holder hands a lease to a better replica once
        that one has been live for ``leases.rebalance_after``; here it already has it). A test
        that reads a holder and then acts on it (evict, step-down, SIGTERM) starts from this,
        not from "every lease held", which a rebalance can change a moment later."""

        def check() -> Any:
            status = self.status()
            alive = {r["id"] for r in status["replicas"] if r["alive"]}
            running = {rid for rid, r in self.replicas.items() if r.proc.poll() is None}
            held = {
                le["name"]: (le["holder"], le["epoch"])
                for le in status["leases"]
                if le["state"] == "held" and le["holder"] == le["placed_on"]
            }
            return held if set(held) >= set(LEASES) and alive >= running else None

        result: dict[str, tuple[str | None, int | None]] = wait_until(
            check, timeout=timeout, interval=0.2, what="every lease held where placement puts it"
        )
        return result

    def stop_all(self) -> None:
        for r in self.replicas.values():
            if r.proc.poll() is None:
                kill_group(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for r in self.replicas.values():
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_group(r.proc)  # the group too: nothing may survive the test
            if r.proc.poll() is None:
                r.proc.wait(5)


def settled(cluster: Cluster) -> dict[str, tuple[str, int]]:
    """``{lease: (holder, epoch)}`` once every lease is held where placement puts it (right
    after start, spread placement still moves leases off the first replica up)."""

    def check() -> dict[str, tuple[str, int]] | None:
        leases = cluster.status()["leases"]
        ok = leases and all(
            le["state"] == "held" and le["holder"] == le["placed_on"] for le in leases
        )
        return {le["name"]: (le["holder"], le["epoch"]) for le in leases} if ok else None

    result: dict[str, tuple[str, int]] = wait_until(
        check, timeout=30, interval=0.2, what="leases settled on their placement"
    )
    return result


def write_config(path: Path, dsn: str, **sections: dict[str, Any]) -> Path:
    import yaml

    data: dict[str, Any] = {
        "database": {"dsn": dsn},
        "scheduler": {"loops_package": "tests.cli.cluster_loops", "shutdown_grace": 2.0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def make_cluster(dsn: str, tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    """``make_cluster(n)`` starts n replicas (r1..rn) and waits until they hold every lease."""
    clusters: list[Cluster] = []

    def make(n: int) -> Cluster:
        config = write_config(tmp_path / "leasectl.yaml", dsn)
        cluster = Cluster(dsn, config, cli_env(config), tmp_path)
        clusters.append(cluster)
        for i in range(1, n + 1):
            cluster.start(f"r{i}")
        cluster.wait_all_held()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()
