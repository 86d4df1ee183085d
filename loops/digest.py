"""digest: one HTML email per period per recipient with certificate counts and expiring certs.

A tick renders the digest for the period ``ctx.tick_at`` (the scheduled slot, not the wall
clock) and, per recipient: claims ``(period, recipient)`` in ``digest_sends`` under the lease
epoch, sends with a Message-ID derived from both, and marks it sent, all fenced. The slot is
the period key, so a restart or failover neither skips a digest (the scheduler coalesces a
missed slot) nor repeats one (a 'sent' row is never re-claimed). The expiring list has every
certificate in the window; certctl's list clamp cut it to 50 and it recorded nothing, so N
replicas sent N digests.

Leased because sending mail is an external side effect that must happen once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from psycopg.rows import dict_row

from leasectl import sql
from leasectl.certs._common import email_domain, schedule_of, within_limit
from leasectl.certs.metrics import NOTIFICATIONS
from leasectl.certs.notify.dispatch import call_budget
from leasectl.certs.notify.email import SmtpSender
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.templates import TemplateRenderError, Templates
from leasectl.certs.settings import DigestSettings, LoopsSettings
from leasectl.errors import ConfigError, LeasectlError
from leasectl.loop import LoopSpec, TickContext

Q = sql.load("digest", package="leasectl.certs.sql")


class DigestFailed(LeasectlError):
    """Some recipients did not get this period's digest (each is recorded in digest_sends)."""


#: Seconds a digest mail may wait for the cluster-wide smtp limit before the slot is retried.
_LIMIT_WAIT = 10.0


def message_id(period: dt.datetime, recipient: str) -> str:
    """Stable per (period, recipient): a re-send after failover is recognisably the same mail."""
    who = hashlib.sha256(recipient.encode("utf-8")).hexdigest()[:16]
    return f"<digest.{period.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}.{who}@leasectl>"


class Digest:
    def __init__(self, settings: DigestSettings, templates: Templates, smtp: SmtpSender) -> None:
        self.settings = settings
        self.templates = templates
        self.smtp = smtp

    def run(self, ctx: TickContext) -> None:
        lease = ctx.lease
        if lease is None:
            raise LeasectlError(f"{ctx.loop} is a leased loop and was run without a lease")
        period = ctx.tick_at if ctx.tick_at.tzinfo else ctx.tick_at.replace(tzinfo=dt.UTC)
        data, recipients = self._gather(ctx)
        if not recipients:
            ctx.log.warning(
                "digest: no recipients (loops.digest.recipients is empty, no owner has an email)",
                extra={"action": "digest_no_recipients"},
            )
            return
        subject = f"{self.settings.subject} — {period:%Y-%m-%d}"
        render_error: TemplateRenderError | None = None
        try:
            html = self.templates.render(
                "digest.html.j2", data | {"subject": subject, "period": period}
            )
        except TemplateRenderError as exc:
            # A broken (or sandbox-refused) template is this period's named, permanent error:
            # recorded per recipient below, logged, and not retried (it would fail the same).
            html, render_error = "", exc
            ctx.log.error(
                "digest for %s not rendered: %s",
                period.isoformat(),
                exc,
                extra={"action": "digest_template_failed"},
            )
        failed: list[str] = []
        for recipient in recipients:
            ctx.check()
            if not within_limit(ctx, "smtp", email_domain(recipient), wait=_LIMIT_WAIT):
                # Deferred by the cluster-wide smtp limit: the slot is retried with backoff
                # and recipients already sent are skipped then.
                failed.append(f"{recipient}: deferred by the smtp rate limit")
                ctx.count("throttled")
                continue
            base = {
                **lease.fence_params(),
                "period": period,
                "recipient": recipient,
                "replica": ctx.replica_id,
            }
            with ctx.transaction() as cur:
                claimed = cur.execute(
                    Q["claim"],
                    base
                    | {"cert_count": data["stats"]["total"], "expiring": len(data["expiring"])},
                ).fetchone()
            if claimed is None:
                ctx.count("already_sent")
                continue
            try:
                if render_error is not None:
                    raise render_error
                self.smtp.send(
                    to=recipient,
                    subject=subject,
                    html=html,
                    message_id=message_id(period, recipient),
                    budget=call_budget(ctx),
                )
            except DeliveryError as exc:
                self._mark(ctx, "mark_failed", base | {"error": str(exc)[:2000]})
                NOTIFICATIONS.labels("Email", "digest_failed").inc()
                ctx.count("failed")
                if exc.permanent:
                    # Retrying the slot cannot help (a malformed address, a 5xx refusal):
                    # recorded in digest_sends and logged, but the tick does not fail for it.
                    ctx.log.error(
                        "digest for %s not delivered to %s: %s",
                        period.isoformat(),
                        recipient,
                        exc,
                        extra={"action": "digest_undeliverable", "recipient": recipient},
                    )
                else:
                    failed.append(f"{recipient}: {exc}")
                continue
            self._mark(ctx, "mark_sent", base)
            NOTIFICATIONS.labels("Email", "digest_sent").inc()
            ctx.count("sent")
        if failed:
            # The scheduler retries the slot with backoff; 'sent' recipients are skipped then.
            raise DigestFailed(
                f"digest for {period:%Y-%m-%d %H:%M} not delivered to {len(failed)} of "
                f"{len(recipients)} recipient(s): " + "; ".join(failed)
            )

    def _gather(self, ctx: TickContext) -> tuple[dict[str, Any], list[str]]:
        days = {"days": self.settings.expiring_days}
        with ctx.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            stats = cur.execute(Q["stats"], days).fetchone() or {}
            by_status = [(r["status"], r["n"]) for r in cur.execute(Q["by_status"]).fetchall()]
            expiring = cur.execute(Q["expiring"], days).fetchall()
            if self.settings.recipients:
                recipients = list(dict.fromkeys(self.settings.recipients))
            else:
                recipients = [r["email"] for r in cur.execute(Q["owner_emails"]).fetchall()]
        data = {
            "stats": stats,
            "by_status": by_status,
            "expiring": expiring,
            "window_days": self.settings.expiring_days,
        }
        return data, recipients

    def _mark(self, ctx: TickContext, query: str, params: dict[str, Any]) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        with ctx.transaction() as cur:
            cur.execute(Q[query], params)


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when disabled. Compiles the templates now: a broken one fails start.

    :raises ConfigError: enabled without an SMTP host, or a template that does not compile.
    """
    ds = settings.digest
    if not ds.loop.enabled:
        return None
    smtp = SmtpSender(settings.notifications.smtp)
    if not smtp.configured:
        raise ConfigError(
            "loops.digest is enabled but loops.notifications.smtp.host is empty; "
            "the digest is sent by email only"
        )
    templates = Templates(settings.notifications.templates_dir)  # checks digest.html.j2 too
    return LoopSpec(
        name="digest",
        **schedule_of(ds.loop),
        placement="leased",
        run=Digest(ds, templates, smtp).run,
        timeout=300.0,
        # As certctl: no digest at start; the first one goes out at the next slot boundary.
        # Afterwards the tick ledger and digest_sends decide, so a restart neither skips nor
        # repeats a period (certctl's 24 h timer restarted with the process, so a service
        # restarted daily never sent one).
        run_on_start=False,
        misfire="coalesce",
        description="daily HTML digest, once per period per recipient",
    )
