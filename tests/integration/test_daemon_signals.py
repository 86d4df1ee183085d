"""``leasectl run`` as a real process: graceful drain on SIGTERM, forced exit on a second signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO, wait_until


def start(tmp_path: Path, dsn: str, sweep_sleep: float) -> tuple[subprocess.Popen[bytes], Path]:
    config = tmp_path / "leasectl.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"dsn": dsn},
                "scheduler": {"loops_package": "tests.fixture_loops", "shutdown_grace": 30},
                "metrics": {"listen": "127.0.0.1:0"},
                "logging": {"format": "json"},
                "loops": {"sweep_sleep": sweep_sleep, "sweep_interval": 60},
            }
        )
    )
    log = tmp_path / "replica.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "leasectl.cli", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, log


def actions(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line).get("action", ""))
    return out


def test_sigterm_drains_then_exits_zero(dsn: str, tmp_path: Path) -> None:
    proc, log = start(tmp_path, dsn, sweep_sleep=1.5)
    try:
        wait_until(lambda: "sweep_sleeping" in actions(log), 30, what="a tick is running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    seen = actions(log)
    # The running tick was waited for, then the lease was released, then the daemon stopped.
    assert (
        seen.index("daemon_stopping") < seen.index("lease_released") < seen.index("daemon_stopped")
    )
    assert "drain_timeout" not in seen


def test_second_signal_exits_at_once(dsn: str, tmp_path: Path) -> None:
    proc, log = start(tmp_path, dsn, sweep_sleep=120)
    try:
        wait_until(lambda: "sweep_sleeping" in actions(log), 30, what="a long tick is running")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "daemon_stopping" in actions(log), 10, what="draining")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        assert time.monotonic() - sent < 5  # not the 30 s shutdown_grace, nor the 120 s tick
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "forced_exit" in actions(log)


def test_sigterm_delivered_to_another_thread_still_stops_the_app(dsn: str, tmp_path: Path) -> None:
    """The kernel may hand a process's SIGTERM to any thread; the App must still stop."""
    from tests.child_output import OutputFile, exit_code, tail

    out = OutputFile(tmp_path / "replica.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    env.update(
        LEASECTL_DSN=dsn,
        LEASECTL_APP="tests.apps.signal_elsewhere:app",
        LEASECTL_METRICS__LISTEN="",
        PYTHONPATH=str(REPO),
    )
    proc = out.popen([sys.executable, "-m", "leasectl.cli", "run"], env=env, cwd=REPO)
    try:
        # The loop signals its own thread once it runs: nobody signals the process here.
        assert exit_code(proc, 60, out) == 0, tail(out)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.text()
    assert "sending SIGTERM to the loop thread" in text
    assert "signal SIGTERM: graceful stop" in text
