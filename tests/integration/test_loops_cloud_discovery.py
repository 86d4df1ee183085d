"""cloud_discovery against moto's server mode: a real HTTP endpoint, certificates we made."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from moto.server import ThreadedMotoServer

from leasectl.certs import cloud_discovery
from leasectl.certs.ca import fingerprint_sha256
from leasectl.certs.settings import (
    AwsSourceSettings,
    CloudDiscoveryLoop,
    CloudDiscoverySettings,
    LoopsSettings,
)
from tests.integration.leased_helpers import free_port, issue, leased, make_ca, pem, pool_for, tick


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Dummy credentials through the normal boto3 chain (environment variables).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def settings(url: str, **aws: Any) -> LoopsSettings:
    return LoopsSettings(
        cloud_discovery=CloudDiscoverySettings(
            loop=CloudDiscoveryLoop(enabled=True),
            aws=AwsSourceSettings(endpoint_url=url, max_attempts=1, **aws),
        )
    )


def seed_aws(url: str, region: str) -> dict[str, str]:
    """Certificates in ACM and Secrets Manager; returns {fingerprint: what}."""
    ca = make_ca("Cloud Test CA")
    acm = boto3.client("acm", region_name=region, endpoint_url=url)
    sm = boto3.client("secretsmanager", region_name=region, endpoint_url=url)
    expected = {}
    cert, key = issue(ca, "acm.example.com", sans=("acm.example.com", "www.acm.example.com"))
    acm.import_certificate(
        Certificate=pem(cert), PrivateKey=pem(key), CertificateChain=ca.cert_pem.encode()
    )
    expected[fingerprint_sha256(cert)] = "acm"
    # PEM bundle with the private key: both certificates recorded, the key never stored.
    c1, k1 = issue(ca, "bundle.example.com")
    sm.create_secret(
        Name="tls/bundle",
        SecretString=(pem(c1) + pem(k1)).decode() + ca.cert_pem,
        Tags=[{"Key": "type", "Value": "certificate"}],
    )
    expected[fingerprint_sha256(c1)] = "sm-bundle"
    expected[fingerprint_sha256(ca.cert)] = "sm-bundle-ca"
    # DER, base64 in a string.
    c2, _ = issue(ca, "der.example.com")
    der = c2.public_bytes(serialization.Encoding.DER)
    sm.create_secret(
        Name="tls/der",
        SecretString=base64.b64encode(der).decode(),
        Tags=[{"Key": "type", "Value": "certificate"}],
    )
    expected[fingerprint_sha256(c2)] = "sm-der"
    # Not ours: wrong tag value, no tag.
    c3, _ = issue(ca, "other.example.com")
    sm.create_secret(
        Name="tls/other", SecretString=pem(c3).decode(), Tags=[{"Key": "type", "Value": "db"}]
    )
    sm.create_secret(Name="plain", SecretString=pem(c3).decode())
    return expected


def test_acm_and_secrets_manager_discovered_and_upserted(
    dsn: str, conn: psycopg.Connection[Any], moto_url: str
) -> None:
    expected = seed_aws(moto_url, "us-east-1")
    spec = cloud_discovery.build(settings(moto_url, regions=("us-east-1",)))
    assert spec is not None and spec.placement == "leased"
    with pool_for(dsn) as pool, leased(dsn, "cloud_discovery") as (_, lease):
        first = tick(spec, pool, lease)
        again = tick(spec, pool, lease)
    assert first.stats == {"found": 4, "new": 4}
    assert again.stats == {"found": 4, "new": 0}  # upsert on the unique key: no duplicates
    rows = conn.execute(
        "SELECT fingerprint_sha256, common_name, source_path, agent_id, status, sans, pem_data "
        "FROM leasectl_certs.discovered_certificates ORDER BY source_path, common_name"
    ).fetchall()
    assert {r[0] for r in rows} == set(expected)
    assert all(r[3] == "cloud-aws" and r[4] == "Unmanaged" for r in rows)
    acm_row = next(r for r in rows if r[1] == "acm.example.com")
    assert acm_row[2].startswith("aws-acm://us-east-1/")
    assert acm_row[5] == ["acm.example.com", "www.acm.example.com"]
    assert {r[2] for r in rows if r[2].startswith("aws-sm://")} == {
        "aws-sm://us-east-1/tls/bundle",
        "aws-sm://us-east-1/tls/der",
    }
    assert not any("PRIVATE KEY" in (r[6] or "") for r in rows)
    scans = conn.execute(
        "SELECT source, certificates_found, certificates_new, errors_count, epoch "
        "FROM leasectl_certs.discovery_scans ORDER BY id"
    ).fetchall()
    assert scans == [
        ("aws-acm://us-east-1", 1, 1, 0, lease.epoch),
        ("aws-sm://us-east-1", 3, 3, 0, lease.epoch),
        ("aws-acm://us-east-1", 1, 0, 0, lease.epoch),
        ("aws-sm://us-east-1", 3, 0, 0, lease.epoch),
    ]
    assert conn.execute("SELECT id, status FROM leasectl_certs.agents").fetchall() == [
        ("cloud-aws", "Online")
    ]


def test_failing_region_fails_only_its_sources(
    dsn: str, conn: psycopg.Connection[Any], moto_url: str
) -> None:
    seed_aws(moto_url, "eu-west-1")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    spec = cloud_discovery.build(
        settings(
            moto_url,
            regions=("us-west-2", "eu-west-1"),
            region_endpoints={"us-west-2": dead},
        )
    )
    assert spec is not None
    with pool_for(dsn) as pool, leased(dsn, "cloud_discovery") as (_, lease):
        ctx = tick(spec, pool, lease)
    assert ctx.stats["sources_failed"] == 2 and ctx.stats["found"] == 4
    scans = conn.execute(
        "SELECT source, certificates_found, errors_count, errors[1] FROM "
        "leasectl_certs.discovery_scans "
        "ORDER BY id"
    ).fetchall()
    assert [s[:3] for s in scans] == [
        ("aws-acm://us-west-2", 0, 1),
        ("aws-sm://us-west-2", 0, 1),
        ("aws-acm://eu-west-1", 1, 0),
        ("aws-sm://eu-west-1", 3, 0),
    ]
    assert "Could not connect" in scans[0][3]


def test_disabled_by_default() -> None:
    assert cloud_discovery.build(LoopsSettings()) is None
