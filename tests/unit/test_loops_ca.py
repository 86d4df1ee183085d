"""The local CA: real certificates that verify, PEM round trips, and refusals that say why."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from leasectl.certs import ca
from leasectl.certs.settings import CaSettings

#: The pure-crypto tests below store keys in plaintext, which must be allowed explicitly.
PLAIN = CaSettings(allow_plaintext_ca_keys=True)


def test_issued_leaf_verifies_and_carries_sans() -> None:
    cert_pem, key_pem = ca.create_ca("Unit CA")
    ca_cert, ca_key = ca.load_issuer_ca(cert_pem, key_pem, PLAIN)
    assert ca.describe(ca_cert).is_ca
    leaf = ca.issue_leaf(ca_cert, ca_key, "www.example.test", ["api.example.test", "10.1.2.3"])
    chain = x509.load_pem_x509_certificates(leaf.chain_pem.encode())
    assert len(chain) == 2 and chain[1] == ca_cert
    ca.verify_issued_by(chain[0], ca_cert)
    info = ca.describe(chain[0])
    assert info.sans == ["www.example.test", "api.example.test", "10.1.2.3"]
    assert info.common_name == "www.example.test" and not info.is_ca
    assert info.serial_hex == leaf.serial_hex
    assert info.fingerprint_sha256 == leaf.fingerprint_sha256 == ca.fingerprint_sha256(chain[0])
    assert (info.key_algorithm, info.key_size) == ("ECDSA", 256)
    assert info.not_after == leaf.not_after
    lifetime = leaf.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=90) - dt.timedelta(seconds=5) < lifetime <= dt.timedelta(days=90)


def test_rsa_and_short_ttl() -> None:
    ca_cert, ca_key = ca.load_issuer_ca(*ca.create_ca("RSA CA", key_type="rsa"), PLAIN)
    leaf = ca.issue_leaf(ca_cert, ca_key, "short.example.test", ttl_seconds=600, key_type="rsa")
    assert (leaf.key_algorithm, leaf.key_size) == ("RSA", 2048)
    assert leaf.not_after - leaf.not_before == dt.timedelta(seconds=600)
    ca.verify_issued_by(x509.load_pem_x509_certificate(leaf.cert_pem.encode()), ca_cert)


def test_a_leaf_does_not_verify_against_another_ca() -> None:
    ca_a = ca.load_issuer_ca(*ca.create_ca("A"), PLAIN)
    ca_b = ca.load_issuer_ca(*ca.create_ca("B"), PLAIN)
    leaf = ca.issue_leaf(*ca_a, "x.example.test")
    with pytest.raises((InvalidSignature, ValueError)):
        ca.verify_issued_by(x509.load_pem_x509_certificate(leaf.cert_pem.encode()), ca_b[0])


def test_load_refuses_missing_garbage_and_mismatched_material() -> None:
    cert_pem, key_pem = ca.create_ca("A")
    other_cert, _ = ca.create_ca("B")
    with pytest.raises(ca.CAError, match="no local CA"):
        ca.load_issuer_ca(cert_pem, None, PLAIN)
    with pytest.raises(ca.CAError, match="does not parse"):
        ca.load_issuer_ca("garbage", key_pem, PLAIN)
    with pytest.raises(ca.CAError, match="does not match"):
        ca.load_issuer_ca(other_cert, key_pem, PLAIN)
    assert isinstance(ca.load_issuer_ca(cert_pem, key_pem, PLAIN)[1], ec.EllipticCurvePrivateKey)


def test_normalize_fingerprint() -> None:
    assert ca.normalize_fingerprint(" AB:cd:EF ") == "abcdef"
