"""Install size and time of the core and of each extra, each into a fresh virtualenv.

Builds the wheel from a copy of the tree (``python -m build --wheel``), then for each variant
(``core`` = no extra, ``embedded``, ``certs``, ``demo``) creates a fresh venv and times
``pip install '<wheel>[extra]'``. pip's cache is warmed by one unmeasured install of every
variant first, so the times are install time (resolve, unpack, write), not the network: add
``--cold`` to pass ``--no-cache-dir`` and measure downloads too. Size is the venv's size on disk
minus an empty venv's (``du``, apparent bytes); packages are the distributions pip lists beyond
an empty venv's.

Usage::

    .venv/bin/python bench/install.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"core": "", "embedded": "[embedded]", "certs": "[certs]", "demo": "[demo]"}


def _sh(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def _size(path: Path) -> int:
    return int(_sh("du", "-sb", str(path)).split()[0])


def _dists(venv: Path) -> set[str]:
    out = _sh(str(venv / "bin/python"), "-m", "pip", "list", "--format=json")
    return {d["name"].lower() for d in json.loads(out)}


def _wheel(work: Path) -> Path:
    src = work / "src"
    shutil.copytree(
        REPO,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv*", ".leasectl", "dist", "build", "*.egg-info"),
    )
    _sh(sys.executable, "-m", "build", "-q", "--wheel", "-o", str(work / "dist"), ".", cwd=src)
    return next((work / "dist").glob("leasectl-*.whl"))


def _install(work: Path, name: str, requirement: str, cold: bool) -> tuple[float, Path]:
    venv = work / f"venv-{name}"
    shutil.rmtree(venv, ignore_errors=True)
    _sh(sys.executable, "-m", "venv", str(venv))
    args = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
    if cold:
        args.append("--no-cache-dir")
    t0 = time.monotonic()
    _sh(*args, requirement)
    return time.monotonic() - t0, venv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="no pip cache: include downloads")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="leasectl-install-") as tmp:
        work = Path(tmp)
        wheel = _wheel(work)
        empty = work / "venv-empty"
        _sh(sys.executable, "-m", "venv", str(empty))
        base_size, base_dists = _size(empty), _dists(empty)
        if not args.cold:
            for name, extra in VARIANTS.items():
                _install(work, name, f"leasectl{extra} @ {wheel.as_uri()}", cold=False)
        print(f"{'variant':<10} {'packages':>8} {'size MB':>8}  install s (median, min-max of n)")
        for name, extra in VARIANTS.items():
            times = []
            for _ in range(args.rounds):
                seconds, venv = _install(
                    work, name, f"leasectl{extra} @ {wheel.as_uri()}", args.cold
                )
                times.append(seconds)
            size = (_size(venv) - base_size) / 1e6
            dists = sorted(_dists(venv) - base_dists)
            print(
                f"{name:<10} {len(dists):>8} {size:>8.1f}  {statistics.median(times):.1f} "
                f"({min(times):.1f}-{max(times):.1f}, n={len(times)})  {' '.join(dists)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
