"""A local certificate authority on ``cryptography``, and X.509 helpers the loops share.

An issuer row of type ``local`` carries its CA as PEM (``issuers.ca_cert_pem`` /
``ca_key_pem``, the key encrypted under ``loops.ca.kek``: see :mod:`loops.ca_keys`).
:func:`create_ca` makes one (the key unencrypted, for the caller to store with
``ca_keys.stored_form``), :func:`load_issuer_ca` reads it back through the key policy,
:func:`issue_leaf` signs a real leaf certificate (SANs, random serial, key usages) with it, and
:func:`describe` turns any certificate (issued here, or seen on the wire by a scan) into the
columns ``discovered_certificates`` and ``endpoint_health_checks`` store.

The CRL loop signs CRLs with the key :func:`load_issuer_ca` returns; keys are ECDSA P-256 by
default because generating one takes well under a millisecond (RSA-2048 takes ~50 ms, which
would dominate job throughput), and RSA is available for leaves that need it.

Example::

    keys = CaSettings(kek=ca_keys.generate_kek())
    cert_pem, key_pem = create_ca("Example Issuing CA")
    stored = ca_keys.stored_form(key_pem, keys)  # -----BEGIN ENCRYPTED PRIVATE KEY-----
    ca_cert, ca_key = load_issuer_ca(cert_pem, stored, keys)
    leaf = issue_leaf(ca_cert, ca_key, "www.example.com", ["www.example.com"], days=90)
    assert leaf.chain_pem.startswith(leaf.cert_pem)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from leasectl.certs.ca_keys import CaKeyError, unseal
from leasectl.certs.settings import CaSettings

KeyType = Literal["ec", "rsa"]

#: Back-date ``not_before`` a little so a verifier with a slightly slow clock accepts it.
CLOCK_SKEW = dt.timedelta(minutes=5)


class CAError(ValueError):
    """The issuer's CA material is missing or unusable; the job fails with this message."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate signed by a local CA, with the columns ``certificate_versions`` needs."""

    cert_pem: str
    key_pem: str
    chain_pem: str  # leaf followed by the CA certificate
    serial_hex: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    key_algorithm: str
    key_size: int


@dataclass(frozen=True)
class CertificateInfo:
    """What a scan or health check records about a certificate it saw."""

    fingerprint_sha256: str
    common_name: str | None
    sans: list[str]
    serial_hex: str
    issuer_dn: str
    subject_dn: str
    not_before: dt.datetime
    not_after: dt.datetime
    key_algorithm: str
    key_size: int
    is_ca: bool
    pem: str


def _new_key(key_type: KeyType) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def create_ca(common_name: str, *, days: int = 3650, key_type: KeyType = "ec") -> tuple[str, str]:
    """Create a self-signed CA; returns ``(cert_pem, key_pem)`` for an ``issuers`` row."""
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def load_issuer_ca(
    cert_pem: str | None, key_pem: str | None, keys: CaSettings
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """Parse an issuer's CA certificate and stored key under the key policy ``keys``.

    :raises CAError: absent, refused (plaintext not allowed, no or wrong KEK), or mismatched.
        The message never contains key material.
    """
    if not cert_pem or not key_pem:
        raise CAError("issuer has no local CA certificate and key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    except ValueError as exc:
        raise CAError(f"issuer CA certificate does not parse: {exc}") from exc
    try:
        key = unseal(key_pem, keys)
    except CaKeyError as exc:
        raise CAError(str(exc)) from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CAError(f"issuer CA key type {type(key).__name__} cannot sign certificates")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CAError("issuer CA key does not match the CA certificate")
    return cert, key


def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    common_name: str,
    sans: list[str] | None = None,
    *,
    days: float = 90,
    ttl_seconds: int | None = None,
    key_type: KeyType = "ec",
) -> IssuedCertificate:
    """Issue a TLS server/client leaf for ``common_name`` (always also a SAN) signed by the CA.

    ``ttl_seconds`` (a short-lived profile's max TTL) overrides ``days`` when given.
    """
    key = _new_key(key_type)
    names = list(dict.fromkeys([common_name, *(sans or [])]))
    now = _now()
    lifetime = dt.timedelta(seconds=ttl_seconds) if ttl_seconds else dt.timedelta(days=days)
    # A short-lived certificate must not start in the past, or its whole TTL shrinks.
    not_before = now if ttl_seconds else now - CLOCK_SKEW
    not_after = now + lifetime
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    cert = builder.sign(ca_key, _signing_hash(ca_key))
    cert_pem = _cert_pem(cert)
    algorithm, size = key_info(cert)
    return IssuedCertificate(
        cert_pem=cert_pem,
        key_pem=_key_pem(key),
        chain_pem=cert_pem + _cert_pem(ca_cert),
        serial_hex=format(cert.serial_number, "x"),
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=fingerprint_sha256(cert),
        key_algorithm=algorithm,
        key_size=size,
    )


def fingerprint_sha256(cert: x509.Certificate | bytes) -> str:
    """Lower-case hex SHA-256 of the DER encoding (the form every fingerprint column uses)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """``AB:CD:...`` or ``abcd...`` → ``abcd...`` so operator-entered fingerprints compare."""
    return value.replace(":", "").replace(" ", "").strip().lower()


def key_info(cert: x509.Certificate) -> tuple[str, int]:
    """``(algorithm, size in bits)`` of the certificate's public key."""
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return "RSA", public.key_size
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ECDSA", public.curve.key_size
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448", 456
    return type(public).__name__, 0


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = list(ext.get_values_for_type(x509.DNSName))
    out += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    out += list(ext.get_values_for_type(x509.RFC822Name))
    return out


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def describe(cert: x509.Certificate | bytes) -> CertificateInfo:
    """Everything the discovery and health tables record about one certificate (DER or parsed)."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    algorithm, size = key_info(cert)
    return CertificateInfo(
        fingerprint_sha256=fingerprint_sha256(cert),
        common_name=cn if isinstance(cn, str) else None,
        sans=_sans(cert),
        serial_hex=format(cert.serial_number, "x"),
        issuer_dn=cert.issuer.rfc4514_string(),
        subject_dn=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=algorithm,
        key_size=size,
        is_ca=_is_ca(cert),
        pem=_cert_pem(cert),
    )


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise unless ``cert``'s signature verifies with the CA's key (tests and sanity checks)."""
    cert.verify_directly_issued_by(ca_cert)
