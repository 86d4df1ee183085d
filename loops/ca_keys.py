"""Local CA private keys at rest: PKCS#8 encrypted with a key-encryption key (KEK).

``issuers.ca_key_pem`` holds each local CA's signing key. A database dump, a replica's
backup or a read-only SQL user must not be enough to sign certificates, so the column holds
``-----BEGIN ENCRYPTED PRIVATE KEY-----`` (PKCS#8 PBES2: PBKDF2-HMAC-SHA256 and AES-256-CBC,
``cryptography``'s ``BestAvailableEncryption``) under ``loops.ca.kek``, a secret that comes
from the environment or a file (``kek_env`` / ``kek_file``) and never from the database.

* :func:`seal` / :func:`unseal` convert between a key and its stored form. ``unseal`` refuses
  a plaintext key (:class:`PlaintextCaKey`) unless ``loops.ca.allow_plaintext_ca_keys`` is
  set, so a key written by an old version or by hand is noticed instead of silently used.
* :func:`stored_form` is what a writer stores for a new CA (job_processor's first issuance,
  the demo and test seeds).
* :func:`rotate_kek` re-encrypts every issuer key under a new KEK in **one** transaction:
  all rows or none, never a table half under the old key and half under the new one.

Errors name the issuer and the reason, never the key material or the KEK.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from psycopg_pool import ConnectionPool

from leasectl import sql
from leasectl.certs.settings import CaSettings

Q = sql.load("ca_keys", package="leasectl.certs.sql")

ENCRYPTED_HEADER = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
#: A KEK is a random secret, not a passphrase; anything shorter is a configuration mistake.
MIN_KEK_LENGTH = 16


class CaKeyError(ValueError):
    """A CA key cannot be stored or loaded under the configured key-encryption policy."""


class PlaintextCaKey(CaKeyError):
    """A plaintext CA key was found while ``loops.ca.allow_plaintext_ca_keys`` is false."""


def generate_kek() -> str:
    """A fresh KEK (256 random bits, URL-safe base64): what the demo writes into its env."""
    return secrets.token_urlsafe(32)


def _password(kek: str, setting: str = "loops.ca.kek") -> bytes:
    if len(kek) < MIN_KEK_LENGTH:
        raise CaKeyError(
            f"{setting} is shorter than {MIN_KEK_LENGTH} characters; use a random secret "
            "(e.g. `openssl rand -base64 32`)"
        )
    return kek.encode("utf-8")


def is_encrypted(stored: str) -> bool:
    return stored.lstrip().startswith(ENCRYPTED_HEADER)


def seal(key: PrivateKeyTypes | str, kek: str) -> str:
    """The stored form of ``key`` (a key object or an unencrypted PEM) under ``kek``."""
    if isinstance(key, str):
        try:
            key = serialization.load_pem_private_key(key.encode("ascii"), password=None)
        except (ValueError, TypeError):
            raise CaKeyError("the CA key to encrypt is not an unencrypted PEM key") from None
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(_password(kek)),
    ).decode("ascii")


def unseal(stored: str, keys: CaSettings, *, issuer: str = "") -> PrivateKeyTypes:
    """The key in ``issuers.ca_key_pem``.

    :raises PlaintextCaKey: a plaintext key while plaintext keys are not allowed.
    :raises CaKeyError: no KEK configured for an encrypted key, the wrong KEK, or not a key.
    """
    who = f"issuer {issuer!r}: " if issuer else ""
    data = stored.encode("ascii", "replace")
    if is_encrypted(stored):
        if not keys.kek:
            raise CaKeyError(
                f"{who}the CA key is encrypted and loops.ca.kek is not set (kek_env / kek_file)"
            )
        try:
            return serialization.load_pem_private_key(data, password=_password(keys.kek))
        except (ValueError, TypeError):
            raise CaKeyError(
                f"{who}the CA key does not decrypt with loops.ca.kek (wrong key-encryption key, "
                "or a KEK rotation that has not reached this replica's configuration)"
            ) from None
    if not keys.allow_plaintext_ca_keys:
        raise PlaintextCaKey(
            f"{who}the CA key is stored in plaintext; refusing to use it. Encrypt it with "
            "`leasectl ca rotate-kek --from-plaintext`, or set "
            "loops.ca.allow_plaintext_ca_keys: true"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CaKeyError(f"{who}the CA key is not a PEM private key") from None


def stored_form(key_pem: str, keys: CaSettings) -> str:
    """What to store for a new CA key: encrypted under the KEK; plaintext only if allowed.

    :raises CaKeyError: no KEK and plaintext keys not allowed.
    """
    if keys.kek:
        return seal(key_pem, keys.kek)
    if keys.allow_plaintext_ca_keys:
        return key_pem
    raise CaKeyError(
        "cannot store a new CA key: loops.ca.kek is not set (kek_env / kek_file), and "
        "loops.ca.allow_plaintext_ca_keys is false"
    )


@contextmanager
def _transaction(target: psycopg.Connection[Any] | ConnectionPool) -> Iterator[psycopg.Cursor[Any]]:
    if isinstance(target, ConnectionPool):
        with target.connection() as conn, conn.transaction():
            yield conn.cursor()
    else:
        with target.transaction():
            yield target.cursor()


def rotate_kek(
    target: psycopg.Connection[Any] | ConnectionPool,
    old: str | None,
    new: str,
) -> int:
    """Re-encrypt every issuer's CA key from ``old`` to ``new`` in one transaction.

    ``old=None`` encrypts plaintext keys (the migration from plaintext storage); keys already
    encrypted under ``new`` are left as they are, so an interrupted operator can re-run it.
    Each new PEM is decrypted again before it is written. Any failure (a key that does not
    decrypt with ``old``, a plaintext key when ``old`` is given) raises and rolls back
    every row. Returns the number of keys re-encrypted.

    :raises CaKeyError: naming the issuer; no row has changed.
    """
    _password(new, "the new KEK")
    if old is not None and old == new:
        raise CaKeyError("the new KEK is the same as the old one")
    source = CaSettings(kek=old or "", allow_plaintext_ca_keys=old is None)
    target_keys = CaSettings(kek=new)
    changed = 0
    with _transaction(target) as cur:
        rows = cur.execute(Q["lock_issuer_keys"]).fetchall()
        for issuer_id, stored in rows:
            if old is None and is_encrypted(stored):
                unseal(stored, target_keys, issuer=issuer_id)  # must already be under `new`
                continue
            if old is not None and not is_encrypted(stored):
                raise PlaintextCaKey(
                    f"issuer {issuer_id!r}: the CA key is stored in plaintext; rotate with "
                    "--from-plaintext to encrypt plaintext keys"
                )
            key = unseal(stored, source, issuer=issuer_id)
            sealed = seal(key, new)
            unseal(sealed, target_keys, issuer=issuer_id)
            cur.execute(Q["store_issuer_key"], {"id": issuer_id, "key_pem": sealed})
            changed += 1
    return changed
