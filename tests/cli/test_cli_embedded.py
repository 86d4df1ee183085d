"""The embedded server of a DSN-less project (issue 19): every command finds the same one from
any folder of the project, ``embedded start`` starts it, ``embedded stop`` refuses while a
replica uses it unless ``--force``, and ``status`` says how to start it."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from leasectl.embedded import EmbeddedPostgres
from tests.cli.conftest import LEASECTL, cli_env, kill_group
from tests.conftest import wait_until

APP = """
from leasectl import App

app = App()
app.configure(metrics_listen="")


@app.loop(every=3600, leased=True)
def report(ctx):
    pass
"""


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [LEASECTL, *args], env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_one_server_per_project_start_status_stop(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    deep = project / "src" / "svc"
    other = project / "docs"
    for folder in (deep, other):
        folder.mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'svc'\n")
    (deep / "svc_app.py").write_text(APP)
    data_dir = project / ".leasectl" / "pgdata"
    server = EmbeddedPostgres(data_dir)
    replica = None
    try:
        # Not running: status says how to get one, and where it looks.
        res = _cli(other, "status")
        assert res.returncode == 2
        assert "leasectl embedded start" in res.stderr and str(data_dir) in res.stderr
        assert "make demo" not in res.stderr

        # Started from a subfolder: the project's server, in the folder with pyproject.toml.
        res = _cli(deep, "embedded", "start")
        assert res.returncode == 0 and "started" in res.stdout, res.stderr
        assert (data_dir / "PG_VERSION").exists()
        info = server.info()
        assert info is not None
        for cwd in (project, other, deep):  # the same server from anywhere in the project
            res = _cli(cwd, "embedded", "status")
            assert res.returncode == 0 and f"pid {info.pid}" in res.stdout, res.stdout
        assert "already running" in _cli(other, "embedded", "start").stdout

        # A replica of the App, started (no DSN) from its own folder, runs on it.
        replica = subprocess.Popen(
            [LEASECTL, "run", "--app", "svc_app:app"],
            env=cli_env(),
            cwd=deep,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def held() -> bool:
            res = _cli(other, "status", "--json")
            leases = json.loads(res.stdout)["leases"] if res.returncode in (0, 1) else []
            return [(le["name"], le["state"]) for le in leases] == [("report", "held")]

        wait_until(held, timeout=90, interval=0.5, what="the replica holds its lease")

        res = _cli(other, "embedded", "stop")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "not stopped: replicas use it" in res.stderr and "--force" in res.stderr
        assert server.info() is not None  # still running
        res = _cli(other, "embedded", "stop", "--force")
        assert res.returncode == 0 and "stopped" in res.stdout
        assert server.info() is None
        # The explicitly named one: another folder, another server (none there).
        res = _cli(other, "embedded", "status", "--data-dir", str(tmp_path / "elsewhere"))
        assert res.returncode == 1 and "not running" in res.stdout
    finally:
        if replica is not None:
            replica.send_signal(signal.SIGTERM)
            try:
                replica.wait(30)
            except subprocess.TimeoutExpired:
                kill_group(replica)
        server.stop("immediate")
