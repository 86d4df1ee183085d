"""Email over SMTP with smtplib: no TLS, STARTTLS or implicit TLS; PLAIN auth when configured.

STARTTLS never downgrades: a server that does not offer it fails the delivery (smtplib raises
``SMTPNotSupportedError``) rather than sending credentials or content in clear. Every header we
build is checked for CR, LF and NUL first (certctl's header-injection rule), so a certificate
CN cannot smuggle a ``Bcc:`` into an alert.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.settings import SmtpSettings
from leasectl.errors import ConfigError

TLS_MODES = ("none", "starttls", "implicit")
_FORBIDDEN = ("\r", "\n", "\0")


def check_header(name: str, value: str) -> str:
    """Return ``value`` or raise a permanent :class:`DeliveryError` if it could inject headers."""
    if any(c in value for c in _FORBIDDEN):
        raise DeliveryError(f"{name} contains CR, LF or NUL; refusing to send", permanent=True)
    return value


class SmtpSender:
    """Sends one message per call on a fresh connection (sends are rare; no pooling needed)."""

    def __init__(self, settings: SmtpSettings) -> None:
        if settings.tls not in TLS_MODES:
            raise ConfigError(
                f"loops.notifications.smtp.tls is {settings.tls!r}; "
                f"use one of {', '.join(TLS_MODES)}"
            )
        if settings.host and (settings.username == "") != (settings.password == ""):
            raise ConfigError(
                "loops.notifications.smtp: set both username and password, or neither"
            )
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.host)

    def send(
        self,
        *,
        to: str,
        subject: str,
        text: str | None = None,
        html: str | None = None,
        message_id: str,
        headers: dict[str, str] | None = None,
        budget: float | None = None,
    ) -> None:
        """Send one message. ``message_id`` is the idempotency key a receiving MTA can dedup on.

        ``budget`` caps the socket timeout (the lease's remaining validity, see webhook.py).

        :raises DeliveryError: on any failure; ``permanent`` when retrying cannot help.
        """
        s = self.settings
        if not self.configured:
            raise DeliveryError(
                "no SMTP host configured (loops.notifications.smtp.host)", permanent=True
            )
        if not to.strip():
            raise DeliveryError("empty email recipient", permanent=True)
        msg = EmailMessage()
        msg["From"] = check_header("From", s.from_address)
        msg["To"] = check_header("To", to)
        msg["Subject"] = check_header("Subject", subject)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = check_header("Message-ID", message_id)
        for name, value in (headers or {}).items():
            msg[name] = check_header(name, value)
        if html is not None:
            if text is not None:
                msg.set_content(text)
                msg.add_alternative(html, subtype="html")
            else:
                msg.set_content(html, subtype="html")
        else:
            msg.set_content(text or "")
        timeout = s.timeout if budget is None else min(s.timeout, budget)
        try:
            self._deliver(msg, timeout)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            permanent = bool(codes) and all(500 <= code < 600 for code in codes)
            raise DeliveryError(
                f"SMTP refused recipient {to}: {exc.recipients}", permanent=permanent
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {s.host}:{s.port} ({s.tls}): {exc!r}") from exc

    def _deliver(self, msg: EmailMessage, timeout: float) -> None:
        s = self.settings
        context = ssl.create_default_context(cafile=s.ca_file or None)
        smtp: smtplib.SMTP
        if s.tls == "implicit":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if s.tls == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.username:
                # PLAIN only: it is the mechanism every server behind TLS supports, and we do
                # not want smtplib to pick CRAM-MD5 or LOGIN behind our back.
                smtp.user, smtp.password = s.username, s.password
                smtp.auth("PLAIN", smtp.auth_plain)
            smtp.send_message(msg)
