"""Settings of the fifteen loops: the ``loops:`` section of leasectl.yaml.

Each loop has ``enabled`` and ``interval`` (seconds), or ``cron`` + ``tz`` instead of
``interval``; channel and source settings sit beside.
Secrets (SMTP password, webhook HMAC key, chat webhook URLs, PagerDuty routing key, OpsGenie
API key, the CA key-encryption key) are plain fields here; the config loader resolves
``*_env`` / ``*_file`` indirections before building these objects and redacts them on output.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoopToggle:
    enabled: bool = True
    interval: float = 60.0
    cron: str = ""  # a cron expression instead of interval ("0 2 * * *"); empty: interval
    tz: str = "UTC"  # the IANA zone cron is read in


@dataclass(frozen=True)
class JobsSettings:
    processor: LoopToggle = field(default_factory=lambda: LoopToggle(interval=30.0))
    retry: LoopToggle = field(default_factory=lambda: LoopToggle(interval=300.0))
    timeout: LoopToggle = field(default_factory=lambda: LoopToggle(interval=600.0))
    claim_batch: int = 100
    concurrency: int = 4
    complete_batch: int = 100  # finished jobs completed together by one guarded statement
    complete_flush_interval: float = 0.05  # seconds a finished job may wait for its batch
    retry_backoff_base: float = 60.0  # seconds; doubled per attempt
    retry_backoff_max: float = 3600.0
    awaiting_csr_timeout: float = 86400.0
    awaiting_approval_timeout: float = 604800.0
    running_timeout: float = 3600.0  # a Running job not finished by then is failed
    agent_offline_ttl: float = 300.0
    cert_validity_days: int = 90
    key_type: str = "ec"  # ec (P-256) | rsa (2048) for keys the local CA generates


@dataclass(frozen=True)
class RenewalSettings:
    check: LoopToggle = field(default_factory=lambda: LoopToggle(interval=3600.0))
    default_thresholds_days: tuple[int, ...] = (30, 14, 7, 0)
    default_channels: tuple[str, ...] = ("Email",)
    default_window_days: int = 30  # renewal window for certificates without a policy
    default_max_attempts: int = 3  # max_attempts of a renewal job without a policy


@dataclass(frozen=True)
class AgentHealthSettings:
    check: LoopToggle = field(default_factory=lambda: LoopToggle(interval=120.0))
    offline_after: float = 300.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""
    port: int = 587
    username: str = ""
    password: str = ""
    from_address: str = "leasectl@localhost"
    tls: str = "starttls"  # none | starttls | implicit
    timeout: float = 10.0
    ca_file: str = ""  # trust this CA for the SMTP server's certificate (tests, private CAs)


@dataclass(frozen=True)
class WebhookSettings:
    url: str = ""
    hmac_key: str = ""
    timeout: float = 10.0
    ca_file: str = ""


@dataclass(frozen=True)
class SlackSettings:
    # Slack incoming-webhook URL; its path is the credential, so the whole URL is a secret
    # (webhook_url_env / webhook_url_file). Empty: Slack rows are dead-lettered as unconfigured.
    webhook_url: str = ""
    timeout: float = 10.0  # POST timeout (seconds)
    ca_file: str = ""  # trust this CA for the server's certificate (tests, private CAs)


@dataclass(frozen=True)
class TeamsSettings:
    # Microsoft Teams incoming-webhook (or Workflows) URL; a secret like Slack's
    # (webhook_url_env / webhook_url_file). Empty: Teams rows are dead-lettered as unconfigured.
    webhook_url: str = ""
    card: str = "adaptive"  # adaptive (Adaptive Card) | messagecard (legacy connector card)
    timeout: float = 10.0  # POST timeout (seconds)
    ca_file: str = ""  # trust this CA for the server's certificate (tests, private CAs)


@dataclass(frozen=True)
class PagerDutySettings:
    url: str = "https://events.pagerduty.com/v2/enqueue"  # Events API v2 endpoint
    # Integration (routing) key of the Events API v2 integration. Secret: routing_key_env /
    # routing_key_file. Empty: PagerDuty rows are dead-lettered as unconfigured.
    routing_key: str = ""
    source: str = "leasectl"  # payload.source of every event
    timeout: float = 10.0  # POST timeout (seconds)
    ca_file: str = ""  # trust this CA for the server's certificate (tests, private CAs)


@dataclass(frozen=True)
class OpsGenieSettings:
    url: str = "https://api.opsgenie.com/v2/alerts"  # Alert API (EU: api.eu.opsgenie.com)
    # API key of an OpsGenie API integration (sent as Authorization: GenieKey). Secret:
    # api_key_env / api_key_file. Empty: OpsGenie rows are dead-lettered as unconfigured.
    api_key: str = ""
    tags: tuple[str, ...] = ("leasectl",)  # tags of every alert
    timeout: float = 10.0  # POST timeout (seconds)
    ca_file: str = ""  # trust this CA for the server's certificate (tests, private CAs)


# The leased loops' toggles carry their own defaults as classes, not as
# ``field(default_factory=lambda: LoopToggle(interval=...))``: a config that sets only
# ``loop: {enabled: true}`` is built as ``<annotated class>(enabled=True)``, and with a plain
# LoopToggle that silently turned the daily digest into a once-a-minute one.


@dataclass(frozen=True)
class NotificationSendLoop(LoopToggle):
    interval: float = 60.0


@dataclass(frozen=True)
class NotificationRetryLoop(LoopToggle):
    interval: float = 120.0


@dataclass(frozen=True)
class DigestLoop(LoopToggle):
    enabled: bool = False
    interval: float = 86400.0


@dataclass(frozen=True)
class CloudDiscoveryLoop(LoopToggle):
    enabled: bool = False
    interval: float = 21600.0


@dataclass(frozen=True)
class CrlLoop(LoopToggle):
    interval: float = 3600.0


@dataclass(frozen=True)
class NotificationSettings:
    send: NotificationSendLoop = field(default_factory=NotificationSendLoop)
    retry: NotificationRetryLoop = field(default_factory=NotificationRetryLoop)
    batch: int = 500
    max_attempts: int = 5  # delivery attempts in all, the first send included
    backoff_minutes: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # after failed attempt 1, 2, ...
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)  # Slack channel
    teams: TeamsSettings = field(default_factory=TeamsSettings)  # Microsoft Teams channel
    # PagerDuty channel (Events API v2; dedup_key = the notification id)
    pagerduty: PagerDutySettings = field(default_factory=PagerDutySettings)
    # OpsGenie channel (Alert API; alias = the notification id)
    opsgenie: OpsGenieSettings = field(default_factory=OpsGenieSettings)
    # CIDRs that webhook and chat URLs may resolve to although they are loopback, private,
    # link-local (cloud metadata), multicast or reserved; every other such address is refused.
    allow_private_networks: tuple[str, ...] = ()
    templates_dir: str = ""  # empty: the packaged loops/templates
    # Only for a row left 'sending' by the OTHER notification loop (send vs retry), e.g. one
    # since disabled: after this many seconds (never less than the longer of the two loops'
    # tick timeouts) either loop takes it. A loop's own claims never wait: its next tick
    # re-delivers whatever an earlier tick or an older epoch left 'sending', same id.
    stale_claim_after: float = 300.0


@dataclass(frozen=True)
class DigestSettings:
    loop: DigestLoop = field(default_factory=DigestLoop)
    recipients: tuple[str, ...] = ()  # empty: owners' emails
    expiring_days: int = 30
    subject: str = "leasectl certificate digest"


@dataclass(frozen=True)
class AwsSourceSettings:
    regions: tuple[str, ...] = ("us-east-1",)
    endpoint_url: str = ""  # e.g. a moto server; empty: AWS
    region_endpoints: dict[str, str] = field(default_factory=dict)  # per-region override
    acm: bool = True
    secrets_manager: bool = True
    tag_key: str = "type"
    tag_value: str = "certificate"
    name_prefix: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 2  # botocore retries per call; a failing source is retried next tick


@dataclass(frozen=True)
class CloudDiscoverySettings:
    loop: CloudDiscoveryLoop = field(default_factory=CloudDiscoveryLoop)
    aws: AwsSourceSettings = field(default_factory=AwsSourceSettings)


@dataclass(frozen=True)
class CrlSettings:
    loop: CrlLoop = field(default_factory=CrlLoop)
    next_update: float = 86400.0


@dataclass(frozen=True)
class NetworkScanSettings:
    loop: LoopToggle = field(default_factory=lambda: LoopToggle(interval=600.0))
    concurrency: int = 50
    max_hosts_per_target: int = 4096  # a /20
    # a target being scanned is held this long (the tick timeout) from other replicas; this
    # replica's next tick takes back a claim its earlier tick left
    claim_ttl: float = 1800.0


@dataclass(frozen=True)
class HealthCheckSettings:
    loop: LoopToggle = field(default_factory=lambda: LoopToggle(interval=60.0))
    concurrency: int = 20
    timeout: float = 5.0
    history_retention_days: int = 30
    claim_batch: int = 200  # due checks claimed per tick


@dataclass(frozen=True)
class GcSettings:
    short_lived_expiry: LoopToggle = field(default_factory=lambda: LoopToggle(interval=30.0))
    acme: LoopToggle = field(default_factory=lambda: LoopToggle(interval=60.0))
    sessions: LoopToggle = field(default_factory=lambda: LoopToggle(interval=3600.0))
    pre_login_session_ttl: float = 600.0


@dataclass(frozen=True)
class CaSettings:
    # Key-encryption key of the local CAs' private keys (issuers.ca_key_pem is PKCS#8,
    # encrypted with it). Secret: kek_env / kek_file. Rotate with `leasectl ca rotate-kek`.
    kek: str = ""
    # Accept CA keys stored in plaintext (and store new ones in plaintext when kek is empty).
    allow_plaintext_ca_keys: bool = False


@dataclass(frozen=True)
class LoopsSettings:
    jobs: JobsSettings = field(default_factory=JobsSettings)
    renewal: RenewalSettings = field(default_factory=RenewalSettings)
    agents: AgentHealthSettings = field(default_factory=AgentHealthSettings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    cloud_discovery: CloudDiscoverySettings = field(default_factory=CloudDiscoverySettings)
    crl: CrlSettings = field(default_factory=CrlSettings)
    network_scan: NetworkScanSettings = field(default_factory=NetworkScanSettings)
    health_check: HealthCheckSettings = field(default_factory=HealthCheckSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    ca: CaSettings = field(default_factory=CaSettings)  # local CA keys at rest
