"""The distributions as a user gets them: the sdist and the wheel built from it, installed
(non-editable) into fresh virtualenvs from outside the source tree.

Installing pulls the dependencies from the package index (pip's cache makes reruns fast).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    ".leasectl",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "tests",
)


def run(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    expect: int | None = 0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run without the caller's LEASECTL_* / PYTHON* variables; check the exit code."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEASECTL_", "PYTHON"))}
    proc = subprocess.run(
        args,
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if expect is not None:
        assert proc.returncode == expect, (
            f"{args} exited {proc.returncode}, expected {expect}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    source: Path  # the copy of the tree they were built from


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build``: the sdist, then the wheel built from that sdist (so the sdist is
    known to build). From a copy, so the shared working tree stays untouched."""
    root = tmp_path_factory.mktemp("dist")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE, symlinks=True)
    out = root / "dist"
    built = run([sys.executable, "-m", "build", "-o", str(out), "."], src, timeout=600)
    # A data folder missing from [tool.setuptools] packages is shipped today with a warning,
    # and will not be by a later setuptools: list it (as leasectl.certs.templates is).
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr, (
        built.stdout + built.stderr
    )
    sdists = list(out.glob("leasectl-*.tar.gz"))
    wheels = list(out.glob("leasectl-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return Dist(sdists[0], wheels[0], src)


def uri(path: Path) -> str:
    """A direct URL with the file's hash: pip caches the wheel it builds from an sdist by URL,
    and without the hash a rebuilt sdist at the same path would install the cached old one."""
    return f"{path.as_uri()}#sha256={hashlib.sha256(path.read_bytes()).hexdigest()}"


def make_venv(path: Path, *requirements: str) -> Path:
    """A fresh virtualenv with ``requirements`` installed; its bin directory."""
    run([sys.executable, "-m", "venv", str(path)], path.parent)
    bin_dir = path / "bin"
    if requirements:
        run([str(bin_dir / "pip"), "install", "-q", "--no-compile", *requirements], path.parent)
    return bin_dir


def site_packages(bin_dir: Path) -> Path:
    out = run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        bin_dir,
    )
    return Path(out.stdout.strip())
