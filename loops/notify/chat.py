"""Slack, Microsoft Teams, PagerDuty and OpsGenie: one POST each, in the service's own format.

Every channel makes its call through :func:`loops.notify.outbound.post` (SSRF check, pinned
address, no redirects) and carries the notification id as the idempotency key where the
service has one: PagerDuty's ``dedup_key`` and OpsGenie's ``alias`` (certctl set neither,
its defect 6, so a failover re-delivery paged twice). Slack and Teams have no dedup field;
the id is shown in the message so a human can tell a re-delivery from a second alert.

Bodies are deterministic for a row (``sort_keys``, timestamps from the row), so a
re-delivery after a failover is byte-identical. Responses: 2xx is success; 400, 401, 403,
404, 410, 413 and 422 are permanent (bad key, bad payload, deleted webhook: retrying cannot
help, the row goes to ``dead``); anything else is retried with backoff. Secrets (the URL path
of Slack/Teams, the routing and API keys) never appear in an error: the URL is shown without
its path and any echo of a key in a response body is replaced.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leasectl._version import __version__
from leasectl.certs.notify.email import check_header
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.outbound import IPNetwork, Resolver, Target, post, system_resolver
from leasectl.certs.settings import (
    OpsGenieSettings,
    PagerDutySettings,
    SlackSettings,
    TeamsSettings,
)
from leasectl.errors import ConfigError

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410, 413, 422})
TEAMS_CARDS = ("adaptive", "messagecard")

#: renewal_check's severity tiers -> PagerDuty severity / OpsGenie priority.
PD_SEVERITY = {"critical": "critical", "warning": "warning", "informational": "info"}
OG_PRIORITY = {"critical": "P1", "warning": "P3", "informational": "P5"}


@dataclass(frozen=True)
class Alert:
    """What every channel needs from one notification row, rendered."""

    key: str  # the notification id: the idempotency key
    type: str
    subject: str
    text: str
    severity: str  # informational | warning | critical (the row's payload), else informational
    created_at: str  # ISO 8601, from the row: stable across re-deliveries
    details: dict[str, str]  # certificate id, threshold, recipient...

    @classmethod
    def from_row(cls, row: dict[str, Any], subject: str, text: str) -> Alert:
        payload = row.get("payload") or {}
        severity = str(payload.get("severity") or "informational")
        details = {
            "notification_id": str(row["id"]),
            "type": str(row["type"]),
            "recipient": str(row.get("recipient") or ""),
        }
        for name in ("certificate_id", "threshold_days", "cert_common_name"):
            if row.get(name) is not None:
                details[name] = str(row[name])
        for name, value in sorted(payload.items()):
            details.setdefault(f"payload.{name}", str(value))
        return cls(
            key=str(row["id"]),
            type=str(row["type"]),
            subject=subject,
            text=text,
            severity=severity if severity in PD_SEVERITY else "informational",
            created_at=row["created_at"].isoformat(),
            details=details,
        )


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


class _Channel:
    """An HTTP JSON channel; subclasses build the body and the headers."""

    name = ""
    setting = ""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        ca_file: str,
        allow: Sequence[IPNetwork],
        secret_path: bool,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.target = Target.parse(url, self.setting, secret_path=secret_path) if url else None
        self.timeout = timeout
        self.ca_file = ca_file
        self.allow = tuple(allow)
        self.resolver = resolver

    @property
    def configured(self) -> bool:
        return self.target is not None

    def _secrets(self) -> Sequence[str]:
        return ()

    def _unconfigured(self) -> DeliveryError:
        return DeliveryError(
            f"{self.name} channel is not configured ({self.setting})", permanent=True
        )

    def _post(self, body: bytes, headers: dict[str, str], budget: float | None) -> int:
        if self.target is None:
            raise self._unconfigured()
        timeout = self.timeout if budget is None else min(self.timeout, budget)
        resp = post(
            self.target,
            body,
            {
                "Content-Type": "application/json",
                "User-Agent": f"leasectl/{__version__}",
                **headers,
            },
            timeout=timeout,
            allow=self.allow,
            ca_file=self.ca_file,
            resolver=self.resolver,
            what=self.name,
        )
        if 200 <= resp.status < 300:
            return resp.status
        snippet = _scrub(resp.body.decode("utf-8", "replace"), self._secrets())
        raise DeliveryError(
            f"{self.name} POST {self.target.safe()} returned HTTP {resp.status}: {snippet!r}",
            permanent=resp.status in PERMANENT_STATUSES,
        )

    def body(self, alert: Alert) -> bytes:
        raise NotImplementedError

    def headers(self, alert: Alert) -> dict[str, str]:
        return {}

    def send(self, alert: Alert, *, budget: float | None = None) -> int:
        """Deliver one alert; return the 2xx status. :raises DeliveryError: on failure."""
        if self.target is None:
            raise self._unconfigured()
        return self._post(self.body(alert), self.headers(alert), budget)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn control characters; the rest is sent as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackSender(_Channel):
    """Slack incoming webhook: ``text`` (the notification fallback) plus Block Kit blocks."""

    name = "Slack"
    setting = "loops.notifications.slack.webhook_url"

    def __init__(
        self,
        settings: SlackSettings,
        allow: Sequence[IPNetwork],
        resolver: Resolver = system_resolver,
    ) -> None:
        super().__init__(
            settings.webhook_url,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            allow=allow,
            secret_path=True,
            resolver=resolver,
        )

    def body(self, alert: Alert) -> bytes:
        subject, text = _slack_escape(alert.subject), _slack_escape(alert.text)
        return _json(
            {
                "text": f"*{subject}*\n{text}"[:3000],
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": alert.subject[:150]}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000] or "-"}},
                    {
                        "type": "context",
                        "elements": [
                            {"type": "mrkdwn", "text": f"leasectl notification `{alert.key}`"}
                        ],
                    },
                ],
            }
        )


class TeamsSender(_Channel):
    """Teams incoming webhook / Workflows: an Adaptive Card message, or a legacy MessageCard."""

    name = "Teams"
    setting = "loops.notifications.teams.webhook_url"

    def __init__(
        self,
        settings: TeamsSettings,
        allow: Sequence[IPNetwork],
        resolver: Resolver = system_resolver,
    ) -> None:
        if settings.card not in TEAMS_CARDS:
            raise ConfigError(
                f"loops.notifications.teams.card is {settings.card!r}; "
                f"use one of {', '.join(TEAMS_CARDS)}"
            )
        super().__init__(
            settings.webhook_url,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            allow=allow,
            secret_path=True,
            resolver=resolver,
        )
        self.card = settings.card

    def body(self, alert: Alert) -> bytes:
        if self.card == "messagecard":
            return _json(
                {
                    "@type": "MessageCard",
                    "@context": "https://schema.org/extensions",
                    "summary": alert.subject,
                    "title": alert.subject,
                    "text": alert.text,
                    "themeColor": {"critical": "D13438", "warning": "FFB900"}.get(
                        alert.severity, "0078D7"
                    ),
                    "sections": [{"facts": [{"name": "Notification", "value": alert.key}]}],
                }
            )
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {
                    "type": "TextBlock",
                    "text": alert.subject,
                    "weight": "Bolder",
                    "size": "Medium",
                    "wrap": True,
                },
                {"type": "TextBlock", "text": alert.text, "wrap": True},
                {
                    "type": "FactSet",
                    "facts": [
                        {"title": "Notification", "value": alert.key},
                        {"title": "Severity", "value": alert.severity},
                    ],
                },
            ],
        }
        return _json(
            {
                "type": "message",
                "attachments": [
                    {
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": None,
                        "content": card,
                    }
                ],
            }
        )


class PagerDutySender(_Channel):
    """PagerDuty Events API v2 ``trigger`` with ``dedup_key`` = the notification id."""

    name = "PagerDuty"
    setting = "loops.notifications.pagerduty"

    def __init__(
        self,
        settings: PagerDutySettings,
        allow: Sequence[IPNetwork],
        resolver: Resolver = system_resolver,
    ) -> None:
        # Configured only with a routing key: the URL alone has a public default.
        url = settings.url if settings.routing_key else ""
        if settings.routing_key and not settings.url:
            raise ConfigError("loops.notifications.pagerduty.url is empty")
        super().__init__(
            url,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            allow=allow,
            secret_path=False,
            resolver=resolver,
        )
        self.settings = settings

    def _secrets(self) -> Sequence[str]:
        return (self.settings.routing_key,)

    def body(self, alert: Alert) -> bytes:
        return _json(
            {
                "routing_key": self.settings.routing_key,
                "event_action": "trigger",
                "dedup_key": alert.key,
                "client": "leasectl",
                "payload": {
                    "summary": alert.subject[:1024],
                    "source": self.settings.source,
                    "severity": PD_SEVERITY[alert.severity],
                    "timestamp": alert.created_at,
                    "class": alert.type,
                    "component": alert.details.get("cert_common_name", ""),
                    "custom_details": {**alert.details, "text": alert.text},
                },
            }
        )


class OpsGenieSender(_Channel):
    """OpsGenie Alert API create-alert with ``alias`` = the notification id."""

    name = "OpsGenie"
    setting = "loops.notifications.opsgenie"

    def __init__(
        self,
        settings: OpsGenieSettings,
        allow: Sequence[IPNetwork],
        resolver: Resolver = system_resolver,
    ) -> None:
        url = settings.url if settings.api_key else ""
        if settings.api_key and not settings.url:
            raise ConfigError("loops.notifications.opsgenie.url is empty")
        super().__init__(
            url,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            allow=allow,
            secret_path=False,
            resolver=resolver,
        )
        self.settings = settings

    def _secrets(self) -> Sequence[str]:
        return (self.settings.api_key,)

    def headers(self, alert: Alert) -> dict[str, str]:
        # check_header: http.client's own refusal would put the key into its ValueError.
        return {
            "Authorization": check_header("OpsGenie api_key", f"GenieKey {self.settings.api_key}")
        }

    def body(self, alert: Alert) -> bytes:
        return _json(
            {
                "message": alert.subject[:130],
                "alias": alert.key,
                "description": alert.text[:15000],
                "priority": OG_PRIORITY[alert.severity],
                "source": "leasectl",
                "entity": alert.details.get("cert_common_name", "")[:512],
                "tags": list(self.settings.tags),
                "details": alert.details,
            }
        )
