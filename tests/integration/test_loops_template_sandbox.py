"""Templates render in jinja2's sandbox: an escape attempt is a named error for that one
notification (or that digest), never a leak and never a crashed tick."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import jinja2
import psycopg
import pytest

import leasectl.certs
from leasectl.certs import digest, notification_send
from leasectl.certs.notify.templates import TemplateRenderError, Templates
from leasectl.certs.settings import (
    DigestLoop,
    DigestSettings,
    LoopsSettings,
    NotificationSettings,
    SmtpSettings,
    WebhookSettings,
)
from tests.integration.leased_helpers import Receiver, leased, pool_for, smtp_server, tick
from tests.integration.test_loops_notifications import queue, row, seed_cert

HMAC_KEY = "sandbox-hmac"
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ n.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


def template_dir(tmp_path: Path, name: str, text: str) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(Path(leasectl.certs.__file__).parent / "templates", target)
    (target / name).write_text(text)
    return target


@pytest.mark.parametrize("source", ESCAPES)
def test_escape_attempts_are_refused_by_the_sandbox(tmp_path: Path, source: str) -> None:
    templates = Templates(str(template_dir(tmp_path, "notify_generic.txt.j2", source)))
    assert isinstance(templates.env, jinja2.sandbox.SandboxedEnvironment)
    ctx = {"n": {"type": "X", "message": "m"}, "cert": None, "payload": {}}
    with pytest.raises(TemplateRenderError) as info:
        templates.notification(ctx)
    err = info.value
    assert err.permanent and err.template == "notify_generic.txt.j2"
    text = str(err)
    assert text.startswith("template notify_generic.txt.j2 failed: ")
    assert "<class" not in text and "environ" not in text.replace("'environ'", "")


def test_runtime_errors_are_named_without_values(tmp_path: Path) -> None:
    templates = Templates(
        str(template_dir(tmp_path, "notify_generic.txt.j2", "{{ n.message ~ (1 // 0) }}"))
    )
    with pytest.raises(TemplateRenderError, match="ZeroDivisionError while rendering"):
        templates.notification({"n": {"type": "X", "message": "secret-ish"}, "cert": None})


def test_html_templates_are_autoescaped() -> None:
    html = Templates().render(
        "digest.html.j2",
        {
            "stats": dict.fromkeys(
                [
                    "total",
                    "expiring",
                    "expired",
                    "revoked",
                    "agents_online",
                    "agents_total",
                    "jobs_failed",
                    "jobs_pending",
                ],
                0,
            ),
            "by_status": [],
            "expiring": [],
            "window_days": 30,
            "subject": "<b>s</b>",
            "period": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        },
    )
    assert "<b>s</b>" not in html and "&lt;b&gt;s&lt;/b&gt;" in html


def test_sandbox_refusal_is_a_named_error_and_the_tick_continues(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    hostile = template_dir(tmp_path, "notify_expiration_warning.txt.j2", ESCAPES[0])
    seed_cert(conn)
    queue(conn, "n-hostile", "Webhook", "team")  # ExpirationWarning: the hostile template
    queue(conn, "n-fine", "Webhook", "team", type_="RenewalSuccess", threshold=None)
    with Receiver(HMAC_KEY) as rx:
        spec = notification_send.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    webhook=WebhookSettings(url=rx.url, hmac_key=HMAC_KEY),
                    allow_private_networks=("127.0.0.0/8",),
                    templates_dir=str(hostile),
                )
            )
        )
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "notification_send") as (_, lease):
            ctx = tick(spec, pool, lease)
    assert ctx.stats == {"dead": 1, "sent": 1}
    assert [x.key for x in rx.received] == ["n-fine"]
    bad = row(conn, "n-hostile")
    assert bad["status"] == "dead" and bad["next_retry_at"] is None
    assert bad["last_error"].startswith(
        "template notify_expiration_warning.txt.j2 failed: refused by the template sandbox"
    )
    assert "__class__" in bad["last_error"] and "<class" not in bad["last_error"]


def test_digest_template_refusal_is_recorded_not_a_crashed_tick(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    hostile = template_dir(tmp_path, "digest.html.j2", ESCAPES[1])
    with smtp_server() as (inbox, port):
        spec = digest.build(
            LoopsSettings(
                notifications=NotificationSettings(
                    smtp=SmtpSettings(host="127.0.0.1", port=port, tls="none"),
                    templates_dir=str(hostile),
                ),
                digest=DigestSettings(loop=DigestLoop(enabled=True), recipients=("a@x.test",)),
            )
        )
        assert spec is not None
        with pool_for(dsn) as pool, leased(dsn, "digest") as (_, lease):
            ctx = tick(spec, pool, lease, tick_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert ctx.stats == {"failed": 1}
    assert inbox.messages == []
    status, error = conn.execute(
        "SELECT status, error FROM leasectl_certs.digest_sends"
    ).fetchone() or ("", "")
    assert status == "failed" and "template digest.html.j2 failed: refused by the" in error
