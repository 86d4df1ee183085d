"""The demo's dataset: a local CA, owners, a renewal policy and certificates near expiry.

Private to :mod:`leasectl.tools.demo`. Real certificates: every version row holds a leaf signed by
the demo CA (``loops.ca``), so job_processor renews them for real and crl_generation signs a
CRL listing the two revoked ones. Expiries are spread over the alert thresholds (30/14/7/0
days), so renewal_check queues alerts and renewal jobs within its first tick.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from leasectl import sql

Q = sql.load("demo", package="leasectl.tools.demo")

OWNERS = (
    ("alice", "Alice (payments)", "alice@payments.example.test"),
    ("bob", "Bob (edge)", "bob@edge.example.test"),
    ("carol", "Carol (internal tools)", "carol@tools.example.test"),
)
#: (name, owner, days until expiry; None: pending issuance; negative: revoked)
CERTIFICATES = (
    ("api.payments.example.test", "alice", 2),
    ("checkout.payments.example.test", "alice", 6),
    ("cdn.edge.example.test", "bob", 12),
    ("www.edge.example.test", "bob", 25),
    ("grafana.tools.example.test", "carol", 40),
    ("wiki.tools.example.test", "carol", 200),
    ("vpn.tools.example.test", "carol", None),
    ("new.edge.example.test", "bob", None),
    ("old.payments.example.test", "alice", -1),
    ("leaked.edge.example.test", "bob", -1),
)


def seed(conn: psycopg.Connection[Any], kek: str) -> dict[str, int]:
    """Insert the dataset in one transaction; return what was created.

    The CA key is stored encrypted under ``kek`` (the demo's ``loops.ca.kek``).
    """
    # the demo runs the real certificate loops; the core never imports them
    from leasectl.certs import ca, ca_keys
    from leasectl.certs.settings import CaSettings

    cert_pem, plain_key = ca.create_ca("leasectl demo issuing CA")
    key_pem = ca_keys.seal(plain_key, kek)
    ca_cert, ca_key = ca.load_issuer_ca(cert_pem, key_pem, CaSettings(kek=kek))
    made = {"certificates": 0, "versions": 0, "revoked": 0, "jobs": 0}
    with conn.transaction():
        for oid, name, email in OWNERS:
            conn.execute(Q["owners"], {"id": oid, "name": name, "email": email})
        conn.execute(
            Q["issuer"], {"id": "demo-ca", "name": "demo CA", "cert": cert_pem, "key": key_pem}
        )
        channels = {
            "informational": ["Email"],
            "warning": ["Email", "Webhook"],
            "critical": ["Email", "Webhook"],
        }
        conn.execute(
            Q["policy"],
            {
                "id": "standard",
                "name": "standard (14 days)",
                "window": 14,
                "channels": json.dumps(channels),
            },
        )
        for i, (cn, owner, days) in enumerate(CERTIFICATES):
            cid = f"mc-{i + 1:02d}"
            leaf = ca.issue_leaf(ca_cert, ca_key, cn, [cn], days=abs(days)) if days else None
            status = "Pending" if days is None else ("Revoked" if days < 0 else "Active")
            conn.execute(
                Q["certificate"],
                {
                    "id": cid,
                    "name": cn.split(".")[0] + "-" + owner,
                    "cn": cn,
                    "sans": [cn],
                    "env": "production",
                    "owner": owner,
                    "issuer": "demo-ca",
                    "policy": "standard",
                    "status": status,
                    "expires_at": leaf.not_after if leaf else None,
                },
            )
            made["certificates"] += 1
            if leaf is not None:
                conn.execute(
                    Q["version"],
                    {
                        "cert": cid,
                        "serial": leaf.serial_hex,
                        "not_before": leaf.not_before,
                        "not_after": leaf.not_after,
                        "fp": leaf.fingerprint_sha256,
                        "pem": leaf.chain_pem,
                        "alg": leaf.key_algorithm,
                        "size": leaf.key_size,
                    },
                )
                made["versions"] += 1
            if days is None:
                conn.execute(Q["job"], {"id": f"job-issue-{cid}", "cert": cid})
                made["jobs"] += 1
            elif days < 0 and leaf is not None:
                conn.execute(
                    Q["revocation"],
                    {
                        "cert": cid,
                        "serial": leaf.serial_hex,
                        "reason": "keyCompromise",
                        "issuer": "demo-ca",
                    },
                )
                made["revoked"] += 1
    return made
