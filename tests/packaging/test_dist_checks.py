"""The sdist and the wheel pass the checks an index and its users apply: validate-pyproject,
twine check (both), check-wheel-contents; one top-level package, the license in both."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.packaging.conftest import Dist, run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_pyproject_is_valid() -> None:
    out = run([str(BIN / "validate-pyproject"), str(REPO / "pyproject.toml")], REPO)
    assert "Valid file" in out.stdout


def test_twine_check_passes_on_sdist_and_wheel(dist: Dist) -> None:
    out = run([str(BIN / "twine"), "check", "--strict", str(dist.sdist), str(dist.wheel)], REPO)
    assert out.stdout.count("PASSED") == 2, out.stdout


def test_check_wheel_contents_passes(dist: Dist) -> None:
    out = run([str(BIN / "check-wheel-contents"), str(dist.wheel)], REPO)
    assert out.stdout.strip().endswith("OK"), out.stdout


def test_the_wheel_has_one_top_level_package_and_the_license(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"leasectl", "leasectl-0.1.0.dist-info"}, tops
    # The certificate loops under leasectl's namespace: code, SQL, templates, py.typed.
    assert "leasectl/certs/registry.py" in names
    assert "leasectl/certs/sql/job_processor.sql" in names
    assert "leasectl/certs/templates/digest.html.j2" in names
    assert "leasectl/certs/py.typed" in names and "leasectl/py.typed" in names
    assert not [n for n in names if n.startswith("loops/")]
    assert "leasectl-0.1.0.dist-info/licenses/LICENSE" in names
    meta = zipfile.ZipFile(dist.wheel).read("leasectl-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in meta
    assert "Classifier: Typing :: Typed" in meta
    core = sorted(
        line.split(" ", 1)[1]
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    names = sorted(c.split(">=")[0].split("[")[0] for c in core)
    expected = [
        "cronsim",
        "prometheus-client",
        "psycopg",
        "psycopg-pool",
        "pyyaml",
        "tenacity",
        "tzdata",
    ]
    assert names == expected, core


def test_the_sdist_has_the_license_and_the_certificate_loops(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert "LICENSE" in names
    assert "leasectl/certs/registry.py" in names
    assert "leasectl/certs/sql/job_processor.sql" in names
