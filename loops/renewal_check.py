"""renewal_check: expiry statuses, renewal jobs inside the renewal window, expiry alerts.

One tick does three things, each a short transaction:

1. ``Active`` certificates inside their policy's ``renewal_window_days`` become ``Expiring``;
   ``Active``/``Expiring`` ones past ``expires_at`` become ``Expired`` (one guarded UPDATE).
2. Certificates of an enabled local issuer (certctl: "an issuer connector is registered")
   inside the renewal window whose policy has ``auto_renew`` (no policy: the
   ``renewal.default_window_days`` window, auto-renew on) get one Renewal job, and move to
   ``RenewalInProgress`` — one ``INSERT ... ON CONFLICT DO NOTHING`` against the unique partial
   index that allows one open renewal/issuance job per certificate. (certctl ignored the window
   and ``auto_renew`` and deduplicated by check-then-insert: defect #8.)
3. Expiry alerts: for each threshold ``T`` of the policy (default ``[30, 14, 7, 0]``) with
   ``trunc(days until expiry) <= T``, one ``ExpirationWarning`` row per channel, status
   ``pending``, for the notification loops to send. The severity tier comes from the policy's
   ``alert_severity_map`` (default 30 informational, 14/7 warning, 0 critical), the channels from
   its ``alert_channels[tier]`` (default ``renewal.default_channels``, Email). The recipient is the
   owner's email; with none, or no/invalid channels, the skip is recorded as an audit row instead.

Why ``everywhere`` is safe: every write is either a status-guarded UPDATE or an insert whose
uniqueness a constraint enforces (one open job per certificate; one alert per certificate,
threshold and channel), so replicas running the same tick at once produce each job and each
alert exactly once. Skip audit rows are serialized by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("renewal_check", package="leasectl.certs.sql")

NAME = "renewal_check"
TIMEOUT = 300.0  # certctl: 5 minutes
BATCH = 1000
MAX_ALERT_BATCHES = 100

#: Channels notification_events accepts (and the notification loops can deliver).
CHANNELS = ("Email", "Webhook", "Slack", "Teams", "PagerDuty", "OpsGenie")
DEFAULT_SEVERITY = {30: "informational", 14: "warning", 7: "warning", 0: "critical"}


@dataclass(frozen=True)
class Alert:
    certificate_id: str
    channel: str
    recipient: str
    subject: str
    message: str
    payload: dict[str, Any]
    threshold: int


@dataclass(frozen=True)
class Skip:
    certificate_id: str
    action: str
    threshold: int
    details: dict[str, Any]


def severity_tier(threshold: int, severity_map: Any) -> str:
    """The policy's tier for ``threshold``, else certctl's defaults, else informational."""
    if isinstance(severity_map, dict):
        tier = severity_map.get(str(threshold))
        if isinstance(tier, str) and tier:
            return tier
    return DEFAULT_SEVERITY.get(threshold, "informational")


def channels_for(tier: str, alert_channels: Any, default: tuple[str, ...]) -> list[str]:
    """The policy's channel list for ``tier`` (possibly empty), else the default channels."""
    if isinstance(alert_channels, dict) and tier in alert_channels:
        value = alert_channels[tier]
        if isinstance(value, list):
            return [str(v) for v in value]
        return [str(value)]
    return list(default)


def render(common_name: str, days_until: float, expires_at: Any, threshold: int) -> tuple[str, str]:
    """Subject and plain-text message of an expiry alert (certctl's wording)."""
    date = expires_at.date().isoformat()
    if days_until <= 0:
        subject = f"[EXPIRED] Certificate {common_name} has expired"
        message = (
            f"[EXPIRED] The certificate for {common_name} has expired ({date}).\n\n"
            "Immediate action required."
        )
    else:
        days = int(days_until)
        subject = f"Certificate {common_name} expires in {days} days"
        message = (
            f"The certificate for {common_name} will expire in {days} days ({date}).\n\n"
            "Please schedule renewal."
        )
    return subject, f"{message}\n\n[threshold:{threshold}]"


def plan_alerts(
    candidates: list[dict[str, Any]], default_channels: tuple[str, ...]
) -> tuple[list[Alert], list[Skip]]:
    """Turn due (certificate, threshold) pairs into alerts to queue and skips to record."""
    alerts: list[Alert] = []
    skips: dict[tuple[str, str, int], Skip] = {}

    def skip(row: dict[str, Any], action: str, **details: Any) -> None:
        key = (row["id"], action, row["threshold"])
        if key not in skips:
            skips[key] = Skip(
                row["id"], action, row["threshold"], {"threshold_days": row["threshold"], **details}
            )

    for row in candidates:
        threshold = int(row["threshold"])
        tier = severity_tier(threshold, row["alert_severity_map"])
        channels = channels_for(tier, row["alert_channels"], default_channels)
        if not row["owner_email"]:
            skip(row, "expiration_alert_skipped_no_recipient", owner_id=row["owner_id"])
            continue
        if not channels:
            skip(row, "expiration_alert_skipped_no_channels", severity_tier=tier)
            continue
        invalid = [c for c in channels if c not in CHANNELS]
        if invalid:
            skip(row, "expiration_alert_skipped_invalid_channel", channels=invalid)
        subject, message = render(
            row["common_name"], row["days_until"], row["expires_at"], threshold
        )
        payload = {
            "certificate_id": row["id"],
            "common_name": row["common_name"],
            "expires_at": row["expires_at"].isoformat(),
            "days_until_expiry": int(row["days_until"]),
            "threshold_days": threshold,
            "severity": tier,
        }
        for channel in dict.fromkeys(c for c in channels if c in CHANNELS):
            alerts.append(
                Alert(row["id"], channel, row["owner_email"], subject, message, payload, threshold)
            )
    return alerts, list(skips.values())


def _alerts(ctx: TickContext, settings: LoopsSettings) -> None:
    params = {
        "default_thresholds": json.dumps(list(settings.renewal.default_thresholds_days)),
        "limit": BATCH,
    }
    for _ in range(MAX_ALERT_BATCHES):
        ctx.check()
        with transaction(ctx) as cur:
            cur.execute(Q["alert_candidates"], params)
            candidates = list(cur.fetchall())
        alerts, skips = plan_alerts(candidates, settings.renewal.default_channels)
        if alerts:
            with transaction(ctx) as cur:
                cur.execute(
                    Q["queue_alerts"],
                    {
                        "actor": actor(ctx),
                        "certificate_ids": [a.certificate_id for a in alerts],
                        "channels": [a.channel for a in alerts],
                        "recipients": [a.recipient for a in alerts],
                        "subjects": [a.subject for a in alerts],
                        "messages": [a.message for a in alerts],
                        "payloads": [json.dumps(a.payload) for a in alerts],
                        "thresholds": [a.threshold for a in alerts],
                    },
                )
                ctx.count("alerts_queued", len(cur.fetchall()))
        if skips:
            with transaction(ctx) as cur:
                cur.execute(Q["lock_alert_skips"])
                cur.execute(
                    Q["record_skips"],
                    {
                        "actor": actor(ctx),
                        "actions": [s.action for s in skips],
                        "certificate_ids": [s.certificate_id for s in skips],
                        "details": [json.dumps(s.details) for s in skips],
                        "thresholds": [s.threshold for s in skips],
                    },
                )
                ctx.count("alerts_skipped", len(cur.fetchall()))
        if len(candidates) < BATCH:
            return


def run(ctx: TickContext) -> None:
    """One tick: statuses, then alerts, then renewal jobs."""
    settings: LoopsSettings = ctx.config
    renewal = settings.renewal
    with transaction(ctx) as cur:
        cur.execute(Q["mark_expiry_status"], {"default_window": renewal.default_window_days})
        ctx.count("status_changed", len(cur.fetchall()))
    _alerts(ctx, settings)
    while True:
        ctx.check()
        with transaction(ctx) as cur:
            cur.execute(
                Q["create_renewal_jobs"],
                {
                    "default_window": renewal.default_window_days,
                    "default_max_attempts": renewal.default_max_attempts,
                    "limit": BATCH,
                    "actor": actor(ctx),
                },
            )
            created = len(cur.fetchall())
        ctx.count("jobs_created", created)
        # Certificates that got a job leave the candidate set (RenewalInProgress); a full
        # batch of conflicts means others are doing the work, so stop rather than spin.
        if created < BATCH:
            return


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.renewal.check.enabled`` is false."""
    return everywhere(
        NAME,
        settings.renewal.check,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="expiry statuses, renewal jobs in the window, expiry alerts once each",
    )
