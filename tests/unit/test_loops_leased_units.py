"""Pure parts of the leased loops: no database, no network."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from leasectl.certs import crl_generation
from leasectl.certs.ca import create_ca, issue_leaf, load_issuer_ca
from leasectl.certs.cloud_discovery import parse_certificates
from leasectl.certs.digest import message_id
from leasectl.certs.notify.dispatch import render_context, webhook_body
from leasectl.certs.notify.email import check_header
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.signing import sign
from leasectl.certs.notify.templates import Templates, snake
from leasectl.certs.notify.webhook import WebhookSender
from leasectl.certs.settings import WebhookSettings
from leasectl.errors import ConfigError
from tests.ca_test_keys import PLAINTEXT_OK

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def test_reason_flags_accept_any_spelling_and_omit_unspecified() -> None:
    assert crl_generation.reason_flag("keyCompromise") is x509.ReasonFlags.key_compromise
    assert crl_generation.reason_flag("key_compromise") is x509.ReasonFlags.key_compromise
    assert crl_generation.reason_flag("CESSATION OF OPERATION") is (
        x509.ReasonFlags.cessation_of_operation
    )
    assert crl_generation.reason_flag("unspecified") is None
    assert crl_generation.reason_flag("made-up") is None
    assert crl_generation.reason_flag(None) is None


@pytest.mark.parametrize(
    ("text", "value"), [("0a1b", 0x0A1B), ("0A:1B", 0x0A1B), ("0x0a1b", 0x0A1B), (" ff ", 255)]
)
def test_parse_serial(text: str, value: int) -> None:
    assert crl_generation.parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "xyz", "0", "-1"])
def test_parse_serial_refuses_what_a_crl_cannot_carry(text: str) -> None:
    with pytest.raises(crl_generation.CrlError):
        crl_generation.parse_serial(text)


def test_build_crl_is_signed_and_carries_the_number() -> None:
    ca_cert, ca_key = load_issuer_ca(*create_ca("Unit CA"), PLAINTEXT_OK)
    crl = crl_generation.build_crl(
        ca_cert,
        ca_key,
        [("01", "superseded", NOW), ("02", None, NOW)],
        number=41,
        this_update=NOW,
        next_update=NOW + dt.timedelta(hours=24),
    )
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 41
    assert crl.get_revoked_certificate_by_serial_number(2) is not None


def test_parse_certificates_pem_bundle_json_der_and_base64() -> None:
    ca_cert, ca_key = load_issuer_ca(*create_ca("Unit CA"), PLAINTEXT_OK)
    leaf = issue_leaf(ca_cert, ca_key, "a.example.com", ["a.example.com"], days=30)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    bundle = (
        leaf.cert_pem + leaf.key_pem + ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert [c.subject for c in parse_certificates(bundle)] == [cert.subject, ca_cert.subject]
    as_json = json.dumps({"certificate": leaf.cert_pem, "private_key": leaf.key_pem})
    assert parse_certificates(as_json) == [cert]
    assert parse_certificates(der) == [cert]
    assert parse_certificates(base64.b64encode(der).decode()) == [cert]
    assert parse_certificates("not a certificate") == []


def test_header_check_rejects_cr_lf_nul() -> None:
    assert check_header("Subject", "fine") == "fine"
    for bad in ("a\rb", "a\nb", "a\0b"):
        with pytest.raises(DeliveryError) as err:
            check_header("To", bad)
        assert err.value.permanent


def test_webhook_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"id":"n1"}'
    want = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign("k", body) == f"sha256={want}"


def test_webhook_settings_validated_at_build() -> None:
    with pytest.raises(ConfigError, match="http"):
        WebhookSender(WebhookSettings(url="ftp://h/x", hmac_key="k"))
    with pytest.raises(ConfigError, match="hmac_key"):
        WebhookSender(WebhookSettings(url="https://h/x"))
    sender = WebhookSender(
        WebhookSettings(url="https://u:p@h.example:8443/x?token=s", hmac_key="k")
    )
    assert sender.safe_url == "https://h.example:8443/x"  # no credentials, no query in logs


def test_webhook_body_is_deterministic() -> None:
    row = {
        "id": "n1",
        "type": "ExpirationWarning",
        "recipient": "team",
        "certificate_id": "c1",
        "threshold_days": 7,
        "payload": {"b": 1, "a": 2},
        "created_at": NOW,
    }
    assert webhook_body(row, "s", "t") == webhook_body(dict(reversed(row.items())), "s", "t")


def test_templates_render_strictly_and_escape_html_only() -> None:
    t = Templates()
    row = {
        "id": "n1",
        "type": "ExpirationWarning",
        "subject": "",
        "message": "",
        "certificate_id": "c1",
        "threshold_days": 7,
        "payload": {},
        "cert_name": "c1",
        "cert_common_name": "<b>a</b>.example.com",
        "cert_expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(days=5, hours=1),
    }
    subject, text = t.notification(render_context(row))
    assert subject == "[leasectl] ExpirationWarning: <b>a</b>.example.com"  # text: not escaped
    assert "will expire in 5 days" in text
    assert snake("ExpirationWarning") == "expiration_warning"
    generic = dict(row, type="RenewalFailure", message="renewal failed: boom")
    assert t.notification(render_context(generic))[1].startswith("renewal failed: boom")


def test_broken_and_missing_templates_fail_at_construction(tmp_path: Path) -> None:
    (tmp_path / "digest.html.j2").write_text("{{ stats.total }")
    with pytest.raises(ConfigError) as err:
        Templates(str(tmp_path))
    text = str(err.value)
    assert "digest.html.j2, line 1" in text
    assert "notify_generic.txt.j2 is missing" in text


def test_digest_message_id_is_stable_per_period_and_recipient() -> None:
    a = message_id(NOW, "ops@example.com")
    assert a == message_id(NOW, "ops@example.com")
    assert a != message_id(NOW + dt.timedelta(days=1), "ops@example.com")
    assert a.startswith("<digest.20261127T120000Z.") and "ops@" not in a


@pytest.mark.parametrize(
    ("hours", "expect"),
    [
        (5, "will expire within a day"),
        (24 * 3 + 1, "will expire in 3 days"),
        (25, "will expire in 1 day ("),
        (-2, "[EXPIRED] The certificate for a.example.com has expired"),
    ],
)
def test_expiry_wording_at_send_time(hours: int, expect: str) -> None:
    row = {
        "id": "n1",
        "type": "ExpirationWarning",
        "subject": "s",
        "message": "",
        "certificate_id": "c1",
        "threshold_days": 0,
        "payload": {},
        "cert_name": "c1",
        "cert_common_name": "a.example.com",
        "cert_expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours, minutes=1),
    }
    assert expect in Templates().notification(render_context(row))[1]


def test_webhook_call_is_bounded_by_the_budget() -> None:
    """A receiver that accepts and never answers cannot hold a delivery past the lease."""
    import ipaddress
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sender = WebhookSender(
            WebhookSettings(url=f"http://127.0.0.1:{port}/h", hmac_key="k", timeout=30.0),
            (ipaddress.ip_network("127.0.0.0/8"),),  # the SSRF guard refuses loopback otherwise
        )
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="timed out"):
            sender.post(b"{}", idempotency_key="n1", epoch=1, replica="r", budget=0.2)
        assert time.monotonic() - started < 2.0
