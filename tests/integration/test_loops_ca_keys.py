"""CA keys at rest: encrypted in issuers.ca_key_pem, plaintext refused, KEK rotation all-or-none."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from leasectl.certs import ca, ca_keys, crl_generation
from leasectl.certs.settings import CaSettings, CrlLoop, CrlSettings, LoopsSettings
from tests.integration.leased_helpers import leased, pool_for, tick

OLD = ca_keys.generate_kek()
NEW = ca_keys.generate_kek()


def add_issuer(conn: psycopg.Connection[Any], issuer_id: str, stored_key: str | None = None) -> str:
    cert_pem, key_pem = ca.create_ca(f"CA {issuer_id}")
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem) "
        "VALUES (%s, %s, 'local', %s, %s)",
        (issuer_id, issuer_id, cert_pem, stored_key or ca_keys.seal(key_pem, OLD)),
    )
    return key_pem


def stored(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(
        conn.execute("SELECT id, ca_key_pem FROM leasectl_certs.issuers ORDER BY id").fetchall()
    )


def test_key_is_encrypted_at_rest_and_needs_the_kek(conn: psycopg.Connection[Any]) -> None:
    plain = add_issuer(conn, "a")
    [column] = stored(conn).values()
    assert column.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "BEGIN PRIVATE KEY" not in column and plain.splitlines()[1] not in column
    cert_pem = conn.execute("SELECT ca_cert_pem FROM leasectl_certs.issuers").fetchone()[0]  # type: ignore[index]
    with pytest.raises(ca.CAError, match="loops.ca.kek is not set"):
        ca.load_issuer_ca(cert_pem, column, CaSettings())
    with pytest.raises(ca.CAError, match="does not decrypt with loops.ca.kek") as info:
        ca.load_issuer_ca(cert_pem, column, CaSettings(kek=NEW))
    assert NEW not in str(info.value) and OLD not in str(info.value)
    ca_cert, key = ca.load_issuer_ca(cert_pem, column, CaSettings(kek=OLD))
    ca.issue_leaf(ca_cert, key, "ok.example.test")


def test_plaintext_key_refused_unless_allowed(conn: psycopg.Connection[Any]) -> None:
    cert_pem, key_pem = ca.create_ca("plain")
    with pytest.raises(ca.CAError, match="stored in plaintext; refusing") as info:
        ca.load_issuer_ca(cert_pem, key_pem, CaSettings(kek=OLD))
    assert "PRIVATE KEY" not in str(info.value)
    ca.load_issuer_ca(cert_pem, key_pem, CaSettings(allow_plaintext_ca_keys=True))
    with pytest.raises(ca_keys.CaKeyError, match="kek is not set"):
        ca_keys.stored_form(key_pem, CaSettings())
    assert ca_keys.stored_form(key_pem, CaSettings(allow_plaintext_ca_keys=True)) == key_pem
    with pytest.raises(ca_keys.CaKeyError, match="shorter than 16"):
        ca_keys.seal(key_pem, "short")


def test_crl_loop_refuses_a_plaintext_key_per_issuer(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """A refused key is a failed event for that issuer, with a clear message; the other
    issuer's CRL is signed with its decrypted key."""
    add_issuer(conn, "enc")
    add_issuer(conn, "plain", stored_key=ca.create_ca("plain")[1])
    spec = crl_generation.build(
        LoopsSettings(crl=CrlSettings(loop=CrlLoop()), ca=CaSettings(kek=OLD))
    )
    assert spec is not None
    with pool_for(dsn) as pool, leased(dsn, "crl_generation") as (_, lease):
        ctx = tick(spec, pool, lease)
    assert ctx.stats == {"generated": 1, "failed": 1}
    events = dict(
        conn.execute(
            "SELECT issuer_id, coalesce(error, 'ok') FROM leasectl_certs.crl_generation_events"
        ).fetchall()
    )
    assert events["enc"] == "ok"
    assert "stored in plaintext; refusing to use it" in events["plain"]
    assert "PRIVATE KEY" not in events["plain"]


def test_rotate_kek_reencrypts_every_row(conn: psycopg.Connection[Any]) -> None:
    keys = {i: add_issuer(conn, i) for i in ("a", "b", "c")}
    before = stored(conn)
    assert ca_keys.rotate_kek(conn, OLD, NEW) == 3
    after = stored(conn)
    assert set(after) == {"a", "b", "c"}
    for issuer, column in after.items():
        assert column.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert column != before[issuer]
        with pytest.raises(ca_keys.CaKeyError, match="does not decrypt"):
            ca_keys.unseal(column, CaSettings(kek=OLD))
        key = ca_keys.unseal(column, CaSettings(kek=NEW))
        assert (
            ca_keys.seal(key, NEW)
            and ca_keys.unseal(ca_keys.seal(keys[issuer], NEW), CaSettings(kek=NEW)).public_key()
            == key.public_key()
        )


def test_failing_rotation_leaves_every_row_unchanged(conn: psycopg.Connection[Any]) -> None:
    for i in ("a", "b"):
        add_issuer(conn, i)
    other = ca_keys.generate_kek()
    add_issuer(conn, "c-other-kek", stored_key=ca_keys.seal(ca.create_ca("x")[1], other))
    add_issuer(conn, "d")
    before = stored(conn)
    with pytest.raises(ca_keys.CaKeyError, match="issuer 'c-other-kek'.*does not decrypt"):
        ca_keys.rotate_kek(conn, OLD, NEW)
    assert stored(conn) == before  # a and b were re-encrypted in the transaction, then undone


def test_rotation_from_plaintext_encrypts_and_is_rerunnable(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    add_issuer(conn, "p1", stored_key=ca.create_ca("p1")[1])
    add_issuer(conn, "p2", stored_key=ca.create_ca("p2")[1])
    with pool_for(dsn) as pool:
        assert ca_keys.rotate_kek(pool, None, NEW) == 2
        assert ca_keys.rotate_kek(pool, None, NEW) == 0  # already encrypted under NEW
    assert all(ca_keys.is_encrypted(v) for v in stored(conn).values())
    with pytest.raises(ca_keys.PlaintextCaKey):
        add_issuer(conn, "p3", stored_key=ca.create_ca("p3")[1])
        ca_keys.rotate_kek(conn, NEW, OLD)
    assert not ca_keys.is_encrypted(stored(conn)["p3"])
