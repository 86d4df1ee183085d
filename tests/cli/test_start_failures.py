"""``python app.py`` (``app.run()``) and ``leasectl run --app`` fail alike at start-up: the same
error line, the same exit code, no traceback (issue 19: a script got a traceback and exit 1
where the CLI said one line and exit 2). Environment errors are blamed on the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.cli.conftest import LEASECTL, cli_env

APP = """
from leasectl import App

app = App()
app.configure(metrics_listen="")


@app.loop(every=60, leased=True)
def report(ctx):
    pass


if __name__ == "__main__":
    raise SystemExit(app.run())
"""


def _both(tmp_path: Path, env: dict[str, str]) -> list[tuple[int, str]]:
    """``(exit code, the error line without its prefix)`` from the script, then the CLI."""
    (tmp_path / "myservice.py").write_text(APP)
    out = []
    for cmd, prefix in (
        ([sys.executable, "myservice.py"], "myservice.py: "),
        ([LEASECTL, "run", "--app", "myservice:app"], "leasectl run: "),
    ):
        res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in res.stderr, res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith(prefix)]
        assert len(errors) == 1, res.stderr
        out.append((res.returncode, errors[0].removeprefix(prefix)))
    return out


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("LEASECTL_LEASES__LEASE_TTL", "abc", "leases.lease_ttl: expected a number, got 'abc'"),
        ("LEASECTL_LEASE__LEASE_TTL", "5", "lease: unknown key 'lease'; did you mean 'leases'?"),
    ],
)
def test_a_bad_variable_fails_alike_and_names_the_variable(
    dsn: str, tmp_path: Path, variable: str, value: str, says: str
) -> None:
    env = cli_env(LEASECTL_DSN=dsn, **{variable: value})
    (script, script_line), (cli, cli_line) = _both(tmp_path, env)
    assert script == cli == 2
    assert script_line == cli_line
    assert f"invalid configuration in environment variable {variable}" in cli_line
    assert "leasectl.yaml" not in cli_line


def test_an_unexpected_database_error_fails_alike(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:  # the replica's registration is refused
        c.execute("ALTER TABLE leasectl_replicas ADD CONSTRAINT refuse CHECK (host = '-')")
    env = cli_env(LEASECTL_DSN=dsn)
    (script, script_line), (cli, cli_line) = _both(tmp_path, env)
    assert script == cli == 2
    assert script_line == cli_line
    assert 'violates check constraint "refuse"' in cli_line
