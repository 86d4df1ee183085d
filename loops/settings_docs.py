"""Descriptions of the ``loops:`` settings, for the generated configuration documents.

The core's generator (``python -m leasectl.config --write``) renders
``config/leasectl.yaml`` and ``docs/operator/configuration.md`` from the settings model; it
finds this module through the configured loops package (``scheduler.loops_package`` +
``.settings_docs``) by name, so the core never imports ``loops``. Domain knowledge stays here,
next to the loops that read these settings.

A setting without an entry here is described by the comment on its dataclass field in
:mod:`loops.settings`; an entry here wins.
"""

from __future__ import annotations

#: Which loop each ``LoopToggle`` (``enabled`` + ``interval``) switches.
TOGGLES: dict[str, str] = {
    "loops.jobs.processor": "job_processor",
    "loops.jobs.retry": "job_retry",
    "loops.jobs.timeout": "job_timeout",
    "loops.renewal.check": "renewal_check",
    "loops.agents.check": "agent_health",
    "loops.notifications.send": "notification_send",
    "loops.notifications.retry": "notification_retry",
    "loops.digest.loop": "digest",
    "loops.cloud_discovery.loop": "cloud_discovery",
    "loops.crl.loop": "crl_generation",
    "loops.network_scan.loop": "network_scan",
    "loops.health_check.loop": "health_check",
    "loops.gc.short_lived_expiry": "short_lived_expiry",
    "loops.gc.acme": "acme_gc",
    "loops.gc.sessions": "session_gc",
}

#: Key path (settings and sections under ``loops``) -> description.
DOCS: dict[str, str] = {
    "loops": "Settings of the fifteen certificate loops (the `leasectl.certs` package's settings).",
    "loops.jobs": "job_processor, job_retry, job_timeout.",
    "loops.renewal": "renewal_check: expiry statuses, renewal jobs, expiry alerts.",
    "loops.agents": "agent_health.",
    "loops.notifications": "notification_send and notification_retry, and their channels.",
    "loops.notifications.smtp": "E-mail channel.",
    "loops.notifications.webhook": "Webhook channel (POST, HMAC-SHA256 signed).",
    "loops.digest": "digest: one e-mail per period per recipient.",
    "loops.cloud_discovery": "cloud_discovery: certificates in AWS.",
    "loops.cloud_discovery.aws": "The AWS source.",
    "loops.crl": "crl_generation.",
    "loops.network_scan": "network_scan.",
    "loops.health_check": "health_check.",
    "loops.gc": "short_lived_expiry, acme_gc, session_gc.",
    "loops.notifications.smtp.password": "SMTP password. Secret: password_env / password_file",
    "loops.notifications.webhook.hmac_key": (
        "key of the X-Signature HMAC-SHA256 header. Secret: hmac_key_env / hmac_key_file"
    ),
    "loops.notifications.webhook.url": "where webhook notifications are POSTed",
    "loops.notifications.smtp.host": (
        "SMTP server; empty: e-mail notifications fail as not configured"
    ),
    "loops.jobs.claim_batch": "jobs claimed per job_processor tick",
    "loops.jobs.concurrency": "jobs run at once per replica (threads)",
    "loops.jobs.retry_backoff_max": "cap of the retry backoff (seconds)",
    "loops.jobs.awaiting_csr_timeout": "seconds a job may wait in AwaitingCSR before it fails",
    "loops.jobs.awaiting_approval_timeout": (
        "seconds a job may wait in AwaitingApproval before it fails"
    ),
    "loops.jobs.agent_offline_ttl": (
        "a Running agent job fails when its agent's last heartbeat is older than this (seconds)"
    ),
    "loops.jobs.cert_validity_days": "validity of certificates the local CA issues",
    "loops.renewal.default_thresholds_days": (
        "days-before-expiry alert thresholds for certificates without a policy"
    ),
    "loops.renewal.default_channels": (
        "alert channels when the policy names none: Email, Webhook, Slack, Teams, PagerDuty, "
        "OpsGenie"
    ),
    "loops.agents.offline_after": (
        "an Online agent whose last heartbeat is older than this (seconds) becomes Offline"
    ),
    "loops.notifications.batch": "pending notifications claimed per tick",
    "loops.notifications.smtp.port": "SMTP port (587 STARTTLS, 465 implicit TLS, 25 none)",
    "loops.notifications.smtp.username": "SMTP user; set together with password, or neither",
    "loops.notifications.smtp.from_address": "From: address of notification e-mails",
    "loops.notifications.smtp.timeout": "SMTP connect/command timeout (seconds)",
    "loops.notifications.webhook.timeout": "webhook POST timeout (seconds)",
    "loops.notifications.webhook.ca_file": "trust this CA for the webhook server's certificate",
    "loops.digest.expiring_days": "certificates expiring within this many days are listed",
    "loops.digest.subject": "subject of the digest e-mail",
    "loops.cloud_discovery.aws.regions": "AWS regions to search",
    "loops.cloud_discovery.aws.acm": "search AWS Certificate Manager",
    "loops.cloud_discovery.aws.secrets_manager": (
        "search Secrets Manager secrets holding certificates"
    ),
    "loops.cloud_discovery.aws.tag_key": "Secrets Manager: only secrets with this tag key",
    "loops.cloud_discovery.aws.tag_value": "... and this tag value (empty: any value)",
    "loops.cloud_discovery.aws.name_prefix": (
        "Secrets Manager: only secrets whose name starts with this"
    ),
    "loops.cloud_discovery.aws.connect_timeout": "AWS connect timeout (seconds)",
    "loops.cloud_discovery.aws.read_timeout": "AWS read timeout (seconds)",
    "loops.crl.next_update": "nextUpdate of each CRL: seconds after its thisUpdate",
    "loops.network_scan.concurrency": "TLS handshakes in flight per replica",
    "loops.health_check.concurrency": "endpoints probed at once per replica",
    "loops.health_check.timeout": "TLS probe timeout (seconds)",
    "loops.health_check.history_retention_days": "health history older than this is deleted",
    "loops.gc.pre_login_session_ttl": (
        "abandoned pre-login sessions older than this (seconds) are deleted"
    ),
}
