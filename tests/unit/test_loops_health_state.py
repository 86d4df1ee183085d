"""The health-check state machine and endpoint parsing, without a database."""

from __future__ import annotations

import pytest

from leasectl.certs.health_check import next_status
from leasectl.certs.tls_probe import parse_endpoint


@pytest.mark.parametrize(
    ("current", "failures_before", "expected"),
    [
        ("unknown", 0, ("healthy", 1)),  # below degraded: unknown/healthy read as healthy
        ("healthy", 0, ("healthy", 1)),
        ("healthy", 1, ("degraded", 2)),  # counted once: the second failure degrades
        ("degraded", 3, ("degraded", 4)),
        ("degraded", 4, ("down", 5)),
        ("down", 9, ("down", 10)),
        ("cert_mismatch", 0, ("cert_mismatch", 1)),
    ],
)
def test_failures(current: str, failures_before: int, expected: tuple[str, int]) -> None:
    assert next_status(current, ok=False, failures_before=failures_before) == expected


def test_success_resets_and_compares_fingerprints_normalized() -> None:
    fp = "ab" * 32
    assert next_status("down", ok=True, failures_before=7, fingerprint=fp) == ("healthy", 0)
    pinned = ":".join(["AB"] * 32)
    assert next_status(
        "unknown", ok=True, failures_before=0, fingerprint=fp, expected_fingerprint=pinned
    ) == ("healthy", 0)
    assert next_status(
        "healthy", ok=True, failures_before=0, fingerprint=fp, expected_fingerprint="cd" * 32
    ) == ("cert_mismatch", 0)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("example.test", ("example.test", 443)),
        ("example.test:8443", ("example.test", 8443)),
        ("https://example.test:9443/health", ("example.test", 9443)),
        ("[::1]:8443", ("::1", 8443)),
        ("::1", ("::1", 443)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("bad", ["", ":443", "host:0", "host:70000"])
def test_parse_endpoint_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(bad)
