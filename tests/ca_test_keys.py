"""The key-encryption key the tests' seeded CAs are stored under (not a secret: tests only)."""

from __future__ import annotations

from leasectl.certs import ca, ca_keys
from leasectl.certs.settings import CaSettings

TEST_KEK = "leasectl-test-kek-0123456789abcdef"
#: loops.ca for tests that run job_processor or crl_generation against seeded issuers.
TEST_CA_KEYS = CaSettings(kek=TEST_KEK)
#: For pure-crypto helpers that hold an unencrypted key in memory (TLS test servers).
PLAINTEXT_OK = CaSettings(allow_plaintext_ca_keys=True)


def seeded_ca(common_name: str) -> tuple[str, str, str]:
    """``(cert_pem, stored_key_pem, plaintext_key_pem)``: the stored key is encrypted."""
    cert_pem, key_pem = ca.create_ca(common_name)
    return cert_pem, ca_keys.seal(key_pem, TEST_KEK), key_pem
