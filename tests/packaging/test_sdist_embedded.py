"""The sdist, installed non-editable with the ``embedded`` extra into a fresh venv: a user's
App with no DSN runs on the embedded server; the certificate loops' schema needs ``certs``;
with it, bare ``migrate`` applies leasectl's and the certificate loops' migrations."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.child_output import OutputFile
from tests.conftest import REPO, wait_until
from tests.packaging.conftest import Dist, make_venv, run, uri
from tests.packaging.test_user_project import start, stop, write_project

pytestmark = pytest.mark.slow


def _stop_embedded(py: str, cwd: Path) -> None:
    subprocess.run(
        [
            py,
            "-c",
            "from leasectl.embedded import EmbeddedPostgres as E;"
            "E('.leasectl/pgdata').stop('immediate')",
        ],
        cwd=cwd,
        check=False,
        capture_output=True,
        timeout=120,
    )


def test_sdist_with_embedded_runs_an_app_without_a_dsn_and_migrates(
    dist: Dist, tmp_path: Path
) -> None:
    # The sdist builds on install (pip builds the wheel from it), with the embedded extra.
    venv = tmp_path / "venv"
    make_venv(venv, f"leasectl[embedded] @ {uri(dist.sdist)}")
    py, leasectl = str(venv / "bin/python"), str(venv / "bin/leasectl")
    work = tmp_path / "cwd"
    work.mkdir()
    project = write_project(tmp_path / "project")  # a user's project, with its own loops/

    where = run([py, "-c", "import leasectl; print(leasectl.__file__)"], work).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the source tree
    configs = run(
        [
            py,
            "-c",
            "from importlib import resources;"
            "print(*sorted(p.name for p in resources.files('leasectl.default_config').iterdir()"
            " if p.name.endswith('.yaml')))",
        ],
        work,
    ).stdout.split()
    assert configs == sorted(p.name for p in (REPO / "config").glob("*.yaml"))

    try:
        # The user's App with no DSN: on the embedded server, its loop commits ticks.
        log = OutputFile(tmp_path / "embedded-1.log")
        proc = start([py, "app.py"], project, {"LEASECTL_REPLICA__ID": "embedded-1"}, log)
        try:
            wait_until(
                lambda: proc.poll() is not None or (project / "ticks.log").exists(),
                timeout=90,
                what="a tick of the App on the embedded server",
            )
        finally:
            code, err = stop(proc, log)
        assert code == 0 and "Traceback" not in err, err
        assert "embedded-1" in (project / "ticks.log").read_text().split()
        assert (project / ".leasectl/pgdata/PG_VERSION").exists()

        # Bare `migrate` prepares for bare `run`, the certificate loops: they need `certs`.
        for args in (["migrate"], ["migrate", "--status"]):
            bare = run([leasectl, *args], work, timeout=120, expect=2)
            said = bare.stderr
            assert "pip install 'leasectl[certs]'" in said and "Traceback" not in said, said

        run(
            [str(venv / "bin/pip"), "install", "-q", f"leasectl[certs] @ {uri(dist.sdist)}"],
            work,
        )
        # A read-only look never starts the embedded server: it says how to get one.
        look = run([leasectl, "migrate", "--status"], work, timeout=120, expect=2)
        assert "not running" in look.stderr, look
        assert "Traceback" not in look.stderr
        applied = run([leasectl, "migrate"], work, timeout=120)
        assert "using the embedded PostgreSQL" in applied.stderr  # said loudly
        out = run([leasectl, "migrate", "--status"], work, timeout=120).stdout
        expected = sorted(
            p.name.removesuffix(".up.sql") for p in (REPO / "migrations").glob("*.up.sql")
        )
        assert expected, "no migrations in the source tree?"
        # The certificate loops' schema too, shipped as package data of leasectl.certs.
        expected += sorted(
            "leasectl_certs:" + p.name.removesuffix(".up.sql")
            for p in (REPO / "loops" / "migrations").glob("*.up.sql")
        )
        assert out.split() == [w for v in expected for w in ("applied", v)], out
        # The embedded default: a server in ./.leasectl/pgdata of the working directory.
        assert (work / ".leasectl/pgdata/PG_VERSION").exists()
    finally:
        _stop_embedded(py, project)
        _stop_embedded(py, work)
