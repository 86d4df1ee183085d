"""Typed settings for the lease core. The YAML loader (``config.py``) builds these.

Defaults are the tuned values the drills measure (see docs/benchmarks.md). The safety
inequality ties them together: a holder must stop believing in its lease before the server
can drop its silent connection and let someone else in::

    lease_ttl + safety_margin <= D_srv
    lease_ttl + safety_margin <= lease_ttl + eviction_grace   (i.e. eviction_grace >= safety_margin)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatabaseSettings:
    """Where the work pool and the lock connection go.

    ``dsn`` empty means: start (or reuse) the embedded server in ``data_dir``.
    ``lock_dsn`` lets work traffic use PgBouncer while the lock connection goes direct.
    """

    dsn: str = ""
    lock_dsn: str = ""
    data_dir: Path = Path(".leasectl/pgdata")
    pool_min_size: int = 0  # an idle follower keeps no work connection (lock + watch only)
    pool_max_size: int = 8
    connect_timeout: float = 5.0
    # Server-side TCP settings for the lock connection; they bound D_srv.
    tcp_keepalives_idle: int = 4
    tcp_keepalives_interval: int = 1
    tcp_keepalives_count: int = 4
    tcp_user_timeout_ms: int = 9000
    # Client-side: a heartbeat on a dead link fails after this instead of hanging.
    client_tcp_user_timeout_ms: int = 3000
    # A zombie's open guarded transaction must not block a new holder's epoch bump forever.
    work_idle_in_transaction_timeout_ms: int = 4000  # below lease_ttl + eviction_grace


@dataclass(frozen=True)
class LoopPlacement:
    """Placement wishes for one leased loop (``leases.loops.<name>``); null keeps the loop's
    own declaration (``LoopSpec.preferred_holder`` / ``requires_labels``)."""

    preferred_holder: str | None = None  # a replica id or label: ranks first
    requires_labels: tuple[str, ...] | None = None  # only replicas with all of these


@dataclass(frozen=True)
class LeaseSettings:
    """Timing of the campaign/heartbeat thread."""

    namespace: str | int = "leasectl"
    acquire_interval: float = 1.0
    acquire_jitter: float = 0.2
    heartbeat_interval: float = 1.0
    lease_ttl: float = 5.0
    safety_margin: float = 2.0
    eviction_grace: float = 2.0
    step_down_cooldown: float = 10.0
    reconnect_max_backoff: float = 5.0
    placement: str = "spread"  # spread (HRW over live replicas) | pack (first to try wins)
    placement_step: float = 0.4  # a candidate of rank r waits r * this before trying
    rebalance_after: float = 3.0  # a better replica must be live this long to get a lease
    rebalance_cooldown: float = 5.0  # a lease stays this long where it was acquired
    standby: str = "direct"  # direct (every replica keeps a lock session) | pooled
    heir_interval: float = 0.5  # pooled: campaign period of a direct replica (heirs)
    standby_after: float = 5.0  # pooled: nothing to hold or inherit this long -> standby
    loops: dict[str, LoopPlacement] = field(default_factory=dict)  # per-lease wishes


@dataclass(frozen=True)
class MigrationSettings:
    lock_timeout: float = 120.0
    directory: Path | None = None  # None: the packaged migrations


@dataclass(frozen=True)
class CoreSettings:
    """Everything the lease core needs; the daemon's full Settings embeds this."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    leases: LeaseSettings = field(default_factory=LeaseSettings)
    migrations: MigrationSettings = field(default_factory=MigrationSettings)


@dataclass(frozen=True)
class ReplicaSettings:
    """Identity of this process in the cluster."""

    id: str = ""  # empty: host-pid-random
    may_lead: bool = True  # false: never campaigns (web-only nodes)
    labels: tuple[str, ...] = ()  # for loops' requires_labels / preferred_holder
    on_wedged: str = "release"  # release | exit: what a replica does with a wedged tick


@dataclass(frozen=True)
class SchedulerSettings:
    shutdown_grace: float = 30.0
    loops_package: str = "leasectl.certs"  # the package whose settings `loops:` holds
    only: tuple[str, ...] = ()  # empty: every enabled loop
    error_backoff_initial: float = 1.0
    error_backoff_max: float = 300.0
    wedge_grace: float = 30.0  # a tick running past timeout + this is wedged
    control_poll_interval: float = 2.0  # re-read loop pauses/triggers (a missed NOTIFY)
    ledger_retention: float = 604800.0  # seconds of tick-ledger history kept (7 days)


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9464"  # empty disables the HTTP server
    enabled: bool = True


@dataclass(frozen=True)
class LimitSettings:
    """A cluster-wide rate limit: ``rate`` events per ``per`` seconds, ``burst`` at once.

    ``per_scope``: each scope (``ctx.limit("webhook", scope=host)``) gets its own bucket
    with these numbers; false: one bucket shared by every scope.
    """

    rate: float = 1.0
    per: float = 1.0
    burst: int = 1
    per_scope: bool = False


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "text"  # text | json
    level: str = "INFO"


@dataclass(frozen=True)
class Settings:
    """The daemon's whole configuration. ``loops`` is the loop package's own settings object."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    leases: LeaseSettings = field(default_factory=LeaseSettings)
    migrations: MigrationSettings = field(default_factory=MigrationSettings)
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    limits: dict[str, LimitSettings] = field(default_factory=dict)
    loops: object = None

    @property
    def core(self) -> CoreSettings:
        return CoreSettings(database=self.database, leases=self.leases, migrations=self.migrations)
