"""A tick that never returns must not keep its loop's lease: the watchdog gives it up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.child_output import OutputFile, exit_code, tail
from tests.conftest import REPO, wait_until
from tests.integration.conftest import query

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    dsn: str, replica: str, port: int, log: OutputFile, **env: str
) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEASECTL_")}
    environ.update(
        LEASECTL_DSN=dsn,
        LEASECTL_APP="tests.apps.wedge:app",
        LEASECTL_SCHEDULER__WEDGE_GRACE="1",
        LEASECTL_SCHEDULER__SHUTDOWN_GRACE="1",
        PYTHONPATH=str(REPO),
        **env,
    )
    return log.popen(
        [
            sys.executable,
            "-m",
            "leasectl.cli",
            "run",
            "--replica-id",
            replica,
            "--metrics-listen",
            f"127.0.0.1:{port}",
        ],
        env=environ,
        cwd=REPO,
    )


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_wedged_tick_gives_up_its_lease_and_its_late_write_is_refused(
    dsn: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    flag = tmp_path / "wedge"
    flag.write_text("stuck")
    port_a, port_b = _free_port(), _free_port()
    log_a, log_b = OutputFile(tmp_path / "wedge-a.log"), OutputFile(tmp_path / "wedge-b.log")
    a = _start(dsn, "wedge-a", port_a, log_a, WEDGE_FLAG=str(flag))
    procs.append(a)
    wait_until(
        lambda: (
            query(dsn, "SELECT holder FROM leasectl_leases WHERE name = 'wedgy'") == [("wedge-a",)]
        ),
        timeout=60,
        what="wedge-a holds wedgy",
    )
    wedged_epoch = query(dsn, "SELECT epoch FROM leasectl_leases WHERE name = 'wedgy'")[0][0]
    b = _start(dsn, "wedge-b", port_b, log_b)
    procs.append(b)
    # timeout (1 s) + wedge_grace (1 s) + crash-takeover bound, with room for a loaded machine.
    wait_until(
        lambda: (
            query(dsn, "SELECT to_regclass('wedge_rows') IS NOT NULL")[0][0]
            and query(dsn, "SELECT count(*) FROM wedge_rows WHERE replica = 'wedge-b'")[0][0] >= 1
        ),
        timeout=60,  # wedge-b's own start-up included
        what="wedge-b runs the loop's next slot",
    )
    assert query(dsn, "SELECT wedged FROM leasectl_replicas WHERE id = 'wedge-a'") == [(["wedgy"],)]
    wait_until(lambda: _healthz(port_a) == 503, timeout=10, what="wedge-a /healthz unhealthy")
    # Asked until it answers (0: no answer within 2 s, which a loaded machine can cause).
    assert wait_until(lambda: _healthz(port_b), timeout=30, what="wedge-b /healthz") == 200
    new_epoch = query(dsn, "SELECT epoch FROM leasectl_leases WHERE name = 'wedgy'")[0][0]
    assert new_epoch > wedged_epoch

    flag.unlink()  # the stuck call returns; its write carries the superseded epoch
    wait_until(
        lambda: query(dsn, "SELECT wedged FROM leasectl_replicas WHERE id = 'wedge-a'") == [([],)],
        timeout=30,
        what="wedge-a no longer wedged",
    )
    assert query(dsn, "SELECT count(*) FROM wedge_rows WHERE epoch = %s", wedged_epoch) == [(0,)]
    slots = query(dsn, "SELECT slot, count(*) FROM wedge_rows GROUP BY slot HAVING count(*) > 1")
    assert slots == []
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
    exit_code(a, 60, log_a)
    out_a = log_a.text()
    assert "WEDGED" in out_a and "Traceback" not in out_a, out_a
    assert exit_code(b, 60, log_b) == 0, tail(log_b)
