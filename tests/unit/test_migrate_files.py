"""Migration discovery without a database: naming, ordering, flags, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest

from leasectl.errors import MigrationError
from leasectl.migrate import discover


def test_discovery_orders_numerically_and_ignores_other_files(tmp_path: Path) -> None:
    for name in ["0010_late.up.sql", "0002_early.up.sql", "0001_down.down.sql", "notes.txt"]:
        (tmp_path / name).write_text("SELECT 1;\n")
    assert [m.version for m in discover(tmp_path)] == ["0002_early", "0010_late"]


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.up.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.up.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="duplicate migration numbers .*0001"):
        discover(tmp_path)


def test_no_transaction_marker_and_checksum(tmp_path: Path) -> None:
    (tmp_path / "0001_a.up.sql").write_text("\n-- leasectl: no-transaction\nCREATE INDEX ...;\n")
    (tmp_path / "0002_b.up.sql").write_text("SELECT 1; -- leasectl: no-transaction\n")
    a, b = discover(tmp_path)
    assert not a.transactional
    assert b.transactional  # the marker must be a line of its own near the top
    assert len(a.checksum) == 64 and a.checksum != b.checksum


def test_packaged_migrations_are_found() -> None:
    versions = [m.version for m in discover()]
    assert versions[0] == "0001_leasectl_core"
    assert versions == sorted(versions)
