"""``leasectl ca rotate-kek`` as an operator runs it: KEKs from env/files, one line on error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from leasectl.certs import ca, ca_keys
from leasectl.certs.settings import CaSettings
from tests.cli.conftest import cli_env, run_cli


def test_rotate_kek_from_plaintext_then_to_a_new_kek(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    cert_pem, key_pem = ca.create_ca("CLI CA")
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem) "
        "VALUES ('cli', 'cli', 'local', %s, %s)",
        (cert_pem, key_pem),
    )
    first, second = ca_keys.generate_kek(), ca_keys.generate_kek()
    (tmp_path / "second").write_text(second + "\n")
    env = cli_env(FIRST_KEK=first, SECOND_KEK=second)

    done = run_cli(
        "ca", "rotate-kek", "--dsn", dsn, "--from-plaintext", "--new-kek-env", "FIRST_KEK", env=env
    )
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 CA key(s)" in done.stdout
    stored = conn.execute("SELECT ca_key_pem FROM leasectl_certs.issuers").fetchone()[0]  # type: ignore[index]
    assert stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")

    # The wrong old KEK: refused with one line naming the issuer, nothing changed.
    bad = run_cli(
        "ca",
        "rotate-kek",
        "--dsn",
        dsn,
        "--old-kek-env",
        "SECOND_KEK",
        "--new-kek-env",
        "FIRST_KEK",
        env=env,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "issuer 'cli'" in bad.stderr and "no key was changed" in bad.stderr
    for secret in (first, second):
        assert secret not in bad.stderr and secret not in bad.stdout
    assert conn.execute("SELECT ca_key_pem FROM leasectl_certs.issuers").fetchone()[0] == stored  # type: ignore[index]

    ok = run_cli(
        "ca",
        "rotate-kek",
        "--dsn",
        dsn,
        "--old-kek-env",
        "FIRST_KEK",
        "--new-kek-file",
        str(tmp_path / "second"),
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    rotated = conn.execute("SELECT ca_key_pem FROM leasectl_certs.issuers").fetchone()[0]  # type: ignore[index]
    ca.load_issuer_ca(cert_pem, rotated, CaSettings(kek=second))
