"""The sdist, installed non-editable with the ``embedded`` extra into a fresh venv, finds its
migrations and config, and runs a user's App on the embedded server when no DSN is set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tests.packaging.conftest import Dist, make_venv, run
from tests.packaging.test_user_project import start, stop, write_project

pytestmark = pytest.mark.slow


def test_sdist_with_embedded_migrates_and_runs_an_app_without_a_dsn(
    dist: Dist, tmp_path: Path
) -> None:
    # The sdist builds on install (pip builds the wheel from it), with the embedded extra.
    venv = tmp_path / "venv"
    make_venv(venv, f"leasectl[embedded] @ {dist.sdist.as_uri()}")

    work = write_project(tmp_path / "cwd")  # a user's project, with its own loops/ package
    py = str(venv / "bin/python")
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
        leasectl = str(venv / "bin/leasectl")
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
        assert out.split() == [w for v in expected for w in ("applied", v)], out
        # The embedded default: a server in ./.leasectl/pgdata of the working directory.
        assert (work / ".leasectl/pgdata/PG_VERSION").exists()

        # The user's App with no DSN: on the same embedded server, its loop commits ticks.
        proc = start([py, "app.py"], work, {"LEASECTL_REPLICA__ID": "embedded-1"})
        try:
            wait_until(
                lambda: proc.poll() is not None or (work / "ticks.log").exists(),
                timeout=90,
                what="a tick of the App on the embedded server",
            )
        finally:
            code, err = stop(proc)
        assert code == 0 and "Traceback" not in err, err
        assert "embedded-1" in (work / "ticks.log").read_text().split()
    finally:
        subprocess.run(
            [
                py,
                "-c",
                "from leasectl.embedded import EmbeddedPostgres as E;"
                "E('.leasectl/pgdata').stop('immediate')",
            ],
            cwd=work,
            check=False,
            capture_output=True,
            timeout=120,
        )
