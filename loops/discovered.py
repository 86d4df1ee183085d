"""Storing discovered certificates: the one upsert network_scan and cloud_discovery share."""

from __future__ import annotations

from typing import Any

from leasectl import sql
from leasectl.certs.ca import CertificateInfo

UPSERT = sql.load("discovered", package="leasectl.certs.sql")["upsert"]


def upsert_params(
    info: CertificateInfo, *, source_path: str, agent_id: str, scan_id: int, source_format: str
) -> dict[str, Any]:
    """Parameters of :data:`UPSERT` for a certificate seen at ``source_path``."""
    return {
        "fingerprint": info.fingerprint_sha256,
        "common_name": info.common_name,
        "sans": info.sans,
        "serial": info.serial_hex,
        "issuer_dn": info.issuer_dn,
        "subject_dn": info.subject_dn,
        "not_before": info.not_before,
        "not_after": info.not_after,
        "key_algorithm": info.key_algorithm,
        "key_size": info.key_size,
        "is_ca": info.is_ca,
        "pem": info.pem,
        "source_path": source_path,
        "source_format": source_format,
        "agent_id": agent_id,
        "scan_id": scan_id,
    }
