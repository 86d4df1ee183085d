"""``leasectl demo``: starts a real cluster, shows it, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.child_output import LineReader, exit_code, tail
from tests.cli.conftest import LEASECTL, cli_env
from tests.conftest import REPO

pytestmark = pytest.mark.slow
DELIVERED = re.compile(r"\| emails [1-9]\d* webhooks [1-9]")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Every live process whose command line contains ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline))
    return found


def delivered(lines: list[str]) -> bool:
    text = "".join(lines)
    return "notification_send=demo-" in text and DELIVERED.search(text) is not None


def test_demo_runs_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    # --duration only bounds the demo should the test die; it is stopped with SIGINT once it
    # has shown what the test waits for (initdb and three starts take a while under load).
    proc = subprocess.Popen(
        [LEASECTL, "demo", "--replicas", "2", "--duration", "600", "--workdir", str(workdir)],
        env=cli_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, like a shell job; we signal only the demo
    )
    assert proc.stdout is not None
    out = LineReader(proc.stdout)
    try:
        # the leases held, and the seeded certificates near expiry already produced e-mails
        # and signed webhooks through the leased notification_send loop
        out.wait_for(delivered, 180, "the demo shows the leases held and deliveries")
        running = processes_mentioning(str(workdir))
        assert len(running) >= 3, running  # two replicas + the embedded postgres (at least)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does to the foreground job
        assert exit_code(proc, 60, out) == 0, tail(out)
        out.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid, _ in processes_mentioning(str(workdir)):
            os.kill(pid, signal.SIGKILL)
    text = out.text()
    logs = {p.name: p.read_text()[-2000:] for p in workdir.glob("demo-*.log")}
    assert "demo stopped; no process left behind" in text, (text, logs)
    assert "replicas stopped (exit codes: demo-1 0, demo-2 0)" in text, (text, logs)
    assert "seeded a local CA" in text
    assert "started demo-1" in text and "started demo-2" in text
    assert "kill -9 " in text  # how to kill a holder and watch the lease move
    assert "0 bad signature" in text and "(0 duplicate)" in text
    assert processes_mentioning(str(workdir)) == []
