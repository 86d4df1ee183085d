"""crl_generation: real CRLs signed by a local CA, numbers strictly increasing across failover."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
import pytest
from cryptography import x509

from leasectl.certs import crl_generation
from leasectl.certs.settings import CrlSettings, LoopsSettings
from leasectl.errors import ConfigError, FencingRejected
from leasectl.lease_manager import LeaseManager
from leasectl.leases import FENCE_SQL, Lease
from leasectl.settings import CoreSettings
from tests.ca_test_keys import TEST_CA_KEYS, seeded_ca
from tests.integration.leased_helpers import leased, pool_for, tick

NAME = "crl_generation"


def seed(conn: psycopg.Connection[Any]) -> x509.Certificate:
    cert_pem, key_pem, _ = seeded_ca("Leasectl Test Issuing CA")  # key stored encrypted
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem) VALUES "
        "('local-1', 'Local', 'local', %s, %s), ('acme-1', 'ACME', 'acme', NULL, NULL)",
        (cert_pem, key_pem),
    )
    conn.execute(
        "INSERT INTO leasectl_certs.certificate_profiles (id, name, allow_short_lived, "
        "max_ttl_seconds) "
        "VALUES ('short', 'short', true, 600)"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, "
        "certificate_profile_id) "
        "VALUES ('c-short', 'c-short', 'short.example.com', 'short')"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.certificate_revocations (serial_number, reason, issuer_id, "
        "certificate_id, "
        "revoked_at) VALUES "
        "('0a1b2c', 'keyCompromise', 'local-1', NULL, now() - interval '2 hours'), "
        "('FF:01', 'superseded', 'local-1', NULL, now() - interval '1 hour'), "
        "('7e57', 'unspecified', 'local-1', NULL, now()), "
        "('5417', 'keyCompromise', 'local-1', 'c-short', now()), "
        "('abcd', 'keyCompromise', 'acme-1', NULL, now())"
    )
    return x509.load_pem_x509_certificate(cert_pem.encode())


def cached(conn: psycopg.Connection[Any]) -> tuple[x509.CertificateRevocationList, int, int]:
    row = conn.execute(
        "SELECT crl_der, crl_number, epoch FROM leasectl_certs.crl_cache WHERE issuer_id = "
        "'local-1'"
    ).fetchone()
    assert row is not None
    return x509.load_der_x509_crl(bytes(row[0])), row[1], row[2]


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_crl_signed_parsed_and_numbers_increase_across_handover(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    ca = seed(conn)
    settings = LoopsSettings(crl=CrlSettings(next_update=7200.0), ca=TEST_CA_KEYS)
    spec = crl_generation.build(settings)
    assert spec is not None and spec.placement == "leased"
    a = LeaseManager("replica-a", [NAME], CoreSettings(), dsn=dsn)
    b = LeaseManager("replica-b", [NAME], CoreSettings(), dsn=dsn)
    a.start()
    numbers = []
    with pool_for(dsn) as pool:
        try:
            lease_a = a.wait_for(NAME, 10)
            b.start()
            before = dt.datetime.now(dt.UTC).replace(microsecond=0)
            ctx = tick(spec, pool, lease_a)
            assert ctx.stats == {"generated": 1}  # the ACME issuer is not even attempted
            crl, number, epoch = cached(conn)
            assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            assert crl.issuer == ca.subject
            assert number == crl_number(crl) == 1 and epoch == lease_a.epoch
            # Short-lived certificates are left out; hex serials in any spelling parse.
            assert {r.serial_number for r in crl} == {0x0A1B2C, 0xFF01, 0x7E57}
            reasons = {
                r.serial_number: r.extensions.get_extension_for_class(x509.CRLReason).value.reason
                for r in crl
                if r.extensions
            }
            assert reasons == {
                0x0A1B2C: x509.ReasonFlags.key_compromise,
                0xFF01: x509.ReasonFlags.superseded,
            }  # 'unspecified' is omitted, as RFC 5280 asks
            assert crl.next_update_utc is not None and crl.last_update_utc >= before
            assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(seconds=7200)
            numbers.append(number)

            tick(spec, pool, lease_a)
            numbers.append(cached(conn)[1])

            # Forced handover: A stops (releases), B takes over with a higher epoch.
            a.stop()
            lease_b = b.wait_for(NAME, 10)
            assert lease_b.epoch > lease_a.epoch
            tick(spec, pool, lease_b, replica="replica-b")
            crl, number, epoch = cached(conn)
            assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            assert number == crl_number(crl) and epoch == lease_b.epoch
            numbers.append(number)

            # A zombie that still believes in epoch A cannot bump the counter or publish.
            zombie = Lease(NAME, lease_a.epoch, time.monotonic() + 60, time.monotonic)
            with pytest.raises(FencingRejected):
                tick(spec, pool, zombie)
            tick(spec, pool, lease_b, replica="replica-b")
            numbers.append(cached(conn)[1])
        finally:
            b.stop()
            a.stop()
    assert numbers == [1, 2, 3, 4]
    events = conn.execute(
        "SELECT crl_number, epoch, replica, succeeded FROM leasectl_certs.crl_generation_events "
        "ORDER BY id"
    ).fetchall()
    assert events == [
        (1, lease_a.epoch, "replica-a", True),
        (2, lease_a.epoch, "replica-a", True),
        (3, lease_b.epoch, "replica-b", True),
        (4, lease_b.epoch, "replica-b", True),
    ]
    # Keyless issuers are skipped quietly, not recorded as failures every tick.
    assert conn.execute(
        "SELECT count(*) FROM leasectl_certs.crl_generation_events WHERE issuer_id = 'acme-1'"
    ).fetchone() == (0,)


def test_bad_serial_fails_that_issuer_only_and_does_not_consume_a_number(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    seed(conn)
    cert_pem, key_pem, _ = seeded_ca("Second CA")
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, ca_cert_pem, ca_key_pem) VALUES "
        "('local-2', 'L2', %s, %s)",
        (cert_pem, key_pem),
    )
    conn.execute(
        "INSERT INTO leasectl_certs.certificate_revocations (serial_number, issuer_id) "
        "VALUES ('zz-top', 'local-2')"
    )
    spec = crl_generation.build(LoopsSettings(ca=TEST_CA_KEYS))
    assert spec is not None
    with pool_for(dsn) as pool, leased(dsn, NAME) as (_, lease):
        ctx = tick(spec, pool, lease)
    assert ctx.stats == {"generated": 1, "failed": 1}
    rows = conn.execute(
        "SELECT issuer_id, crl_number, succeeded, error FROM "
        "leasectl_certs.crl_generation_events ORDER BY id"
    ).fetchall()
    assert rows[0][:3] == ("local-1", 1, True)
    assert rows[1][:3] == ("local-2", None, False) and "not hex" in rows[1][3]
    counters = dict(conn.execute("SELECT id, crl_number FROM leasectl_certs.issuers").fetchall())
    assert counters == {"local-1": 1, "local-2": 0, "acme-1": 0}
    assert conn.execute("SELECT issuer_id FROM leasectl_certs.crl_cache").fetchall() == [
        ("local-1",)
    ]


def test_next_update_must_exceed_interval() -> None:
    with pytest.raises(ConfigError, match="next_update"):
        crl_generation.build(LoopsSettings(crl=CrlSettings(next_update=60.0)))


def test_counter_update_embeds_the_fence() -> None:
    assert FENCE_SQL in crl_generation.NEXT_CRL_NUMBER
    assert "__FENCE__" not in crl_generation.NEXT_CRL_NUMBER
