"""The fence protocol around one notification delivery, shared by send and retry.

One tick: (1) claim a batch in a transaction guarded by the lease epoch (status
``sending``, ``claimed_epoch``/``claimed_lease`` set); (2) per row, ``ctx.check()``, render,
and make the external call with the notification id as idempotency key, holding no database
connection; (3) mark the outcome in another guarded transaction. A holder that lost its lease
between (2) and (3) cannot mark anything; the row stays ``sending`` under its old epoch and
the next holder re-delivers it with the same key. Rows claimed but not attempted when a tick
is cancelled are handed back. A row left ``sending`` under the current epoch, by an earlier
tick whose work connection died before the call or before the mark (so it could neither mark
nor hand back), is re-delivered by the next tick: a loop's ticks never overlap on a replica,
so a claim from an earlier tick belongs to a tick that has ended, and the same key makes a
second copy harmless. ``stale_claim_after`` is only for rows the *other* notification loop
left ``sending`` (send vs retry; that loop may be disabled now).

Failures: retry_count counts failed attempts. Attempt ``k`` failing schedules the next one
``backoff_minutes[k-1]`` later (1, 2, 4, 8 min); the ``max_attempts``-th failure, or a
permanent error, makes the row ``dead`` with ``last_error``. certctl left ``next_retry_at``
NULL on a first failure, so its retry sweep never saw those rows (its defect #5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from psycopg.rows import dict_row

from leasectl import sql
from leasectl.certs._common import email_domain, within_limit
from leasectl.certs.metrics import NOTIFICATIONS
from leasectl.certs.notify.chat import (
    Alert,
    OpsGenieSender,
    PagerDutySender,
    SlackSender,
    TeamsSender,
)
from leasectl.certs.notify.email import SmtpSender
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.outbound import parse_networks
from leasectl.certs.notify.templates import Templates
from leasectl.certs.notify.webhook import WebhookSender
from leasectl.certs.settings import NotificationSettings
from leasectl.errors import ConfigError, LeasectlError
from leasectl.loop import TickContext

Q = sql.load("notifications", package="leasectl.certs.sql")

Mode = Literal["send", "retry"]

ChatSender = SlackSender | TeamsSender | PagerDutySender | OpsGenieSender


@dataclass(frozen=True)
class Channels:
    """The configured channels and compiled templates; built once at startup."""

    templates: Templates
    email: SmtpSender
    webhook: WebhookSender
    slack: SlackSender
    teams: TeamsSender
    pagerduty: PagerDutySender
    opsgenie: OpsGenieSender

    @classmethod
    def from_settings(cls, settings: NotificationSettings) -> Channels:
        """:raises ConfigError: bad channel settings or a template that does not compile."""
        problems = []
        if settings.max_attempts < 1:
            problems.append("loops.notifications.max_attempts must be at least 1")
        if settings.batch < 1:
            problems.append("loops.notifications.batch must be at least 1")
        if not settings.backoff_minutes or min(settings.backoff_minutes) <= 0:
            problems.append("loops.notifications.backoff_minutes must be positive minutes")
        if problems:
            raise ConfigError(problems)
        allow = parse_networks(
            settings.allow_private_networks, "loops.notifications.allow_private_networks"
        )
        return cls(
            Templates(settings.templates_dir),
            SmtpSender(settings.smtp),
            WebhookSender(settings.webhook, allow),
            SlackSender(settings.slack, allow),
            TeamsSender(settings.teams, allow),
            PagerDutySender(settings.pagerduty, allow),
            OpsGenieSender(settings.opsgenie, allow),
        )


def render_context(row: dict[str, Any]) -> dict[str, Any]:
    """What a notification template sees.

    ``n`` (the row), ``payload``, ``cert`` (or None), ``days_left`` (whole days, rounded down)
    and ``expired``, computed at send time: a retry an hour later says what is true then.
    """
    cert = None
    days_left = None
    expired = False
    if row.get("cert_common_name") is not None:
        cert = {
            "id": row["certificate_id"],
            "name": row["cert_name"],
            "common_name": row["cert_common_name"],
            "expires_at": row["cert_expires_at"],
        }
        if row["cert_expires_at"] is not None:
            left = (row["cert_expires_at"] - datetime.now(UTC)).total_seconds()
            days_left = int(left // 86400)
            expired = left <= 0
    return {
        "n": row,
        "cert": cert,
        "payload": row.get("payload") or {},
        "days_left": days_left,
        "expired": expired,
    }


def call_budget(ctx: TickContext) -> float:
    """Seconds an external call may take: until the lease may be gone, or the tick's deadline.

    Bounding the socket timeout this way keeps a slow receiver from getting our request
    after another replica holds the lease and re-delivers (two epochs in flight at once).
    """
    assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
    ctx.check()
    return max(0.05, min(ctx.lease.remaining, ctx.deadline - ctx.clock()))


def webhook_body(row: dict[str, Any], subject: str, text: str) -> bytes:
    """The JSON body; deterministic, so a re-delivery is byte-identical (same signature)."""
    doc = {
        "id": row["id"],
        "type": row["type"],
        "recipient": row["recipient"],
        "subject": subject,
        "text": text,
        "certificate_id": row["certificate_id"],
        "threshold_days": row["threshold_days"],
        "payload": row.get("payload") or {},
        "created_at": row["created_at"].isoformat(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def tick_timeout(settings: NotificationSettings, mode: Mode) -> float:
    """The cooperative deadline of one ``notification_send`` or ``notification_retry`` tick."""
    if mode == "send":
        return max(60.0, settings.send.interval)
    return max(120.0, settings.retry.interval)


def foreign_claim_after(settings: NotificationSettings) -> float:
    """Seconds after which a row left ``sending`` by the other notification loop is taken.

    ``stale_claim_after``, but never less than either loop's tick timeout: a live tick's
    calls end by its deadline (:func:`call_budget`), so an older claim is an ended tick's.
    """
    return max(
        settings.stale_claim_after, tick_timeout(settings, "send"), tick_timeout(settings, "retry")
    )


class Dispatcher:
    """Runs one tick of ``notification_send`` (mode ``send``) or ``notification_retry``."""

    def __init__(self, channels: Channels, settings: NotificationSettings, mode: Mode) -> None:
        self.channels = channels
        self.settings = settings
        self.mode = mode

    def run(self, ctx: TickContext) -> None:
        lease = ctx.lease
        if lease is None:
            raise LeasectlError(f"{ctx.loop} is a leased loop and was run without a lease")
        rows = self._claim(ctx)
        if not rows:
            return
        ctx.log.info(
            "%s: claimed %d notification(s)",
            ctx.loop,
            len(rows),
            extra={"action": "notifications_claimed", "epoch": lease.epoch, "count": len(rows)},
        )
        pending = [row["id"] for row in rows]
        deferred: list[str] = []
        try:
            for row in rows:
                ctx.check()
                pending.remove(row["id"])
                if self._admit(ctx, row):
                    self._attempt(ctx, row)
                else:
                    deferred.append(row["id"])
        finally:
            if pending or deferred:
                self._release(ctx, pending + deferred)

    # -- steps ----------------------------------------------------------------------------

    def _params(self, ctx: TickContext) -> dict[str, Any]:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        return {**ctx.lease.fence_params(), "replica": ctx.replica_id}

    def _claim(self, ctx: TickContext) -> list[dict[str, Any]]:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        params = {
            **self._params(ctx),
            "batch": self.settings.batch,
            "stale_after": foreign_claim_after(self.settings),
            "max_attempts": self.settings.max_attempts,
        }
        query = Q["claim_pending"] if self.mode == "send" else Q["claim_due_retries"]
        with ctx.pool.connection() as conn, conn.transaction():
            ctx.lease.guard(conn.cursor())  # guard() reads a tuple row: plain cursor
            return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()

    def _rate_limit(self, row: dict[str, Any]) -> tuple[str, str | None]:
        """The cluster-wide limit a delivery counts against: ``smtp`` scoped by the
        recipient's domain, ``webhook`` (every HTTP channel) scoped by the receiver's host."""
        channel = row["channel"]
        if channel == "Email":
            return "smtp", email_domain(str(row.get("recipient") or ""))
        sender = self.channels.webhook if channel == "Webhook" else self._chat(channel)
        target = sender.target if sender is not None else None
        return "webhook", target.host if target is not None else None

    def _chat(self, channel: str) -> ChatSender | None:
        senders: dict[str, ChatSender] = {
            "Slack": self.channels.slack,
            "Teams": self.channels.teams,
            "PagerDuty": self.channels.pagerduty,
            "OpsGenie": self.channels.opsgenie,
        }
        return senders.get(channel)

    def _admit(self, ctx: TickContext, row: dict[str, Any]) -> bool:
        """Whether the rate limit lets this delivery go now. A throttled one is handed back
        (not failed, no attempt counted) and goes out at a later tick; so is one whose limit
        cannot be checked because the database is unreachable (fail closed)."""
        name, scope = self._rate_limit(row)
        allowed = within_limit(ctx, name, scope)
        if not allowed:
            ctx.count("throttled")
        return allowed

    def _attempt(self, ctx: TickContext, row: dict[str, Any]) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        channel = row["channel"]
        try:
            self._deliver(ctx, row)
        except DeliveryError as exc:
            self._mark_failed(ctx, row, exc)
            return
        with ctx.transaction() as cur:
            done = cur.execute(Q["mark_sent"], self._params(ctx) | {"id": row["id"]}).fetchone()
        outcome = "sent" if done else "superseded"
        NOTIFICATIONS.labels(channel, outcome).inc()
        ctx.count(outcome)

    def _deliver(self, ctx: TickContext, row: dict[str, Any]) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        # TemplateRenderError (a DeliveryError, permanent) for any rendering failure.
        subject, text = self.channels.templates.notification(render_context(row))
        channel = row["channel"]
        budget = call_budget(ctx)
        chat = self._chat(channel)
        if chat is not None:
            chat.send(Alert.from_row(row, subject, text), budget=budget)
            return
        if channel == "Email":
            self.channels.email.send(
                to=row["recipient"],
                subject=subject,
                text=text,
                message_id=f"<{row['id']}@leasectl>",
                headers={"X-Leasectl-Idempotency-Key": row["id"]},
                budget=budget,
            )
        elif channel == "Webhook":
            self.channels.webhook.post(
                webhook_body(row, subject, text),
                idempotency_key=row["id"],
                epoch=ctx.lease.epoch,
                replica=ctx.replica_id,
                budget=budget,
            )
        else:
            raise DeliveryError(f"unknown channel {channel!r}", permanent=True)

    def _mark_failed(self, ctx: TickContext, row: dict[str, Any], exc: DeliveryError) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        s = self.settings
        attempts = int(row["retry_count"]) + 1
        dead = exc.permanent or attempts >= s.max_attempts
        backoff = s.backoff_minutes
        wait_s = 60.0 * backoff[min(attempts - 1, len(backoff) - 1)]
        params = self._params(ctx) | {
            "id": row["id"],
            "dead": dead,
            "wait_s": wait_s,
            "error": str(exc)[:2000],
        }
        with ctx.transaction() as cur:
            done = cur.execute(Q["mark_failed"], params).fetchone()
        outcome = ("dead" if dead else "failed") if done else "superseded"
        NOTIFICATIONS.labels(row["channel"], outcome).inc()
        ctx.count(outcome)
        ctx.log.warning(
            "notification %s (%s) attempt %d failed%s: %s",
            row["id"],
            row["channel"],
            attempts,
            "; dead" if dead else f"; next try in {wait_s:.0f}s",
            exc,
            extra={
                "action": "notification_dead" if dead else "notification_failed",
                "notification": row["id"],
                "epoch": ctx.lease.epoch,
            },
        )

    def _release(self, ctx: TickContext, ids: list[str]) -> None:
        """Best effort: if the lease is gone the next holder re-claims them anyway."""
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        try:
            with ctx.transaction() as cur:
                cur.execute(Q["release_claims"], self._params(ctx) | {"ids": ids})
        except Exception as exc:  # noqa: BLE001 - the tick is already failing; keep its error
            ctx.log.info(
                "%s: could not hand back %d claimed notification(s): %s",
                ctx.loop,
                len(ids),
                exc,
                extra={"action": "notifications_release_failed", "count": len(ids)},
            )
