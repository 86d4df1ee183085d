"""The built wheel, installed non-editable in a fresh venv, finds its migrations and config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".leasectl",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "tests",
)


def _run(
    args: list[str], cwd: Path, timeout: float = 300, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASECTL_", "PYTHON"))}
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == expect, (
        f"{args} exited {proc.returncode}, expected {expect}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def test_wheel_installs_and_migrates_the_embedded_server(tmp_path: Path) -> None:
    # Build from a copy so the working tree (shared with other builds) stays untouched.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", str(tmp_path)], src)
    wheels = list(tmp_path.glob("leasectl-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    _run([str(venv / "bin/pip"), "install", "-q", "--no-compile", str(wheels[0])], tmp_path)

    work = tmp_path / "cwd"
    work.mkdir()
    py = str(venv / "bin/python")
    where = _run([py, "-c", "import leasectl; print(leasectl.__file__)"], work).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the source tree
    configs = _run(
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
        look = _run([leasectl, "migrate", "--status"], work, timeout=120, expect=2)
        assert "not running" in look.stderr, look
        assert "Traceback" not in look.stderr
        applied = _run([leasectl, "migrate"], work, timeout=120)
        assert "using the embedded PostgreSQL" in applied.stderr  # said loudly
        out = _run([leasectl, "migrate", "--status"], work, timeout=120).stdout
        expected = sorted(
            p.name.removesuffix(".up.sql") for p in (REPO / "migrations").glob("*.up.sql")
        )
        assert expected, "no migrations in the source tree?"
        # Bare `migrate` prepares for bare `run`: the certificate loops' schema too, shipped
        # as package data of leasectl.certs.
        expected += sorted(
            "leasectl_certs:" + p.name.removesuffix(".up.sql")
            for p in (REPO / "loops" / "migrations").glob("*.up.sql")
        )
        assert out.split() == [w for v in expected for w in ("applied", v)], out
        # The embedded default: a server in ./.leasectl/pgdata of the working directory.
        assert (work / ".leasectl/pgdata/PG_VERSION").exists()
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
