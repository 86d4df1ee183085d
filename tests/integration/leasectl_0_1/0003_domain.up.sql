-- The certificate-lifecycle domain the fifteen loops work on. Names follow certctl; unlike
-- certctl, constraints (not check-then-insert) do the deduplication.

CREATE TABLE owners (
    id    text PRIMARY KEY,
    name  text NOT NULL,
    email text
);

CREATE TABLE issuers (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    type           text NOT NULL DEFAULT 'local' CHECK (type IN ('local', 'acme', 'external')),
    -- Local CA material (PEM). Only issuers with a key can sign certificates and CRLs.
    ca_cert_pem    text,
    ca_key_pem     text,
    -- Monotonic CRL number; incremented inside the fenced CRL transaction.
    crl_number     bigint NOT NULL DEFAULT 0,
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE certificate_profiles (
    id                text PRIMARY KEY,
    name              text NOT NULL,
    allow_short_lived boolean NOT NULL DEFAULT false,
    max_ttl_seconds   integer NOT NULL DEFAULT 0
);

CREATE TABLE renewal_policies (
    id                     text PRIMARY KEY,
    name                   text NOT NULL,
    renewal_window_days    integer NOT NULL DEFAULT 30 CHECK (renewal_window_days >= 0),
    auto_renew             boolean NOT NULL DEFAULT true,
    max_retries            integer NOT NULL DEFAULT 3,
    retry_interval_seconds integer NOT NULL DEFAULT 300,
    alert_thresholds_days  jsonb NOT NULL DEFAULT '[30, 14, 7, 0]',
    alert_channels         jsonb NOT NULL DEFAULT '{}',
    alert_severity_map     jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE managed_certificates (
    id                     text PRIMARY KEY,
    name                   text NOT NULL UNIQUE,
    common_name            text NOT NULL,
    sans                   text[] NOT NULL DEFAULT '{}',
    environment            text,
    owner_id               text REFERENCES owners(id),
    issuer_id              text REFERENCES issuers(id),
    renewal_policy_id      text REFERENCES renewal_policies(id),
    certificate_profile_id text REFERENCES certificate_profiles(id),
    status                 text NOT NULL DEFAULT 'Pending' CHECK (status IN
        ('Pending', 'Active', 'Expiring', 'Expired', 'RenewalInProgress', 'Failed', 'Revoked',
         'Archived')),
    expires_at             timestamptz,
    tags                   jsonb NOT NULL DEFAULT '{}',
    source                 text NOT NULL DEFAULT 'managed',
    last_renewal_at        timestamptz,
    revoked_at             timestamptz,
    revocation_reason      text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX managed_certificates_expires ON managed_certificates (expires_at)
    WHERE status NOT IN ('Archived', 'Revoked');

CREATE TABLE certificate_versions (
    id                 bigserial PRIMARY KEY,
    certificate_id     text NOT NULL REFERENCES managed_certificates(id) ON DELETE CASCADE,
    serial_number      text NOT NULL,
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    fingerprint_sha256 text NOT NULL,
    pem_chain          text NOT NULL,
    key_algorithm      text,
    key_size           integer,
    job_id             text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (serial_number)
);
-- A re-run of the same job cannot store a second version.
CREATE UNIQUE INDEX certificate_versions_one_per_job ON certificate_versions (job_id)
    WHERE job_id IS NOT NULL;

CREATE TABLE agents (
    id                text PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    hostname          text,
    status            text NOT NULL DEFAULT 'Online' CHECK (status IN ('Online', 'Offline', 'Degraded')),
    last_heartbeat_at timestamptz,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    retired_at        timestamptz
);

CREATE TABLE jobs (
    id             text PRIMARY KEY,
    type           text NOT NULL CHECK (type IN ('Issuance', 'Renewal', 'Deployment', 'Validation')),
    certificate_id text REFERENCES managed_certificates(id) ON DELETE CASCADE,
    agent_id       text REFERENCES agents(id),
    status         text NOT NULL DEFAULT 'Pending' CHECK (status IN
        ('Pending', 'AwaitingCSR', 'AwaitingApproval', 'Running', 'Completed', 'Failed',
         'Cancelled')),
    attempts       integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL DEFAULT 3,
    last_error     text,
    scheduled_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    completed_at   timestamptz,
    status_changed_at timestamptz NOT NULL DEFAULT now(),
    claimed_by     text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_claim ON jobs (scheduled_at) WHERE status = 'Pending';
CREATE INDEX jobs_failed ON jobs (scheduled_at) WHERE status = 'Failed';
-- job_timeout's guarded UPDATEs look jobs up by status and age.
CREATE INDEX jobs_status_age ON jobs (status, status_changed_at)
    WHERE status IN ('AwaitingCSR', 'AwaitingApproval', 'Running');
-- Timeouts count from entering a state, so every status change must move status_changed_at,
-- whoever writes it (loops, an API, an operator in psql).
CREATE FUNCTION jobs_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.status_changed_at := now();
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_status_changed BEFORE UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_status_changed();
-- At most one open renewal/issuance job per certificate: the constraint is the dedup.
CREATE UNIQUE INDEX jobs_one_open_renewal ON jobs (certificate_id)
    WHERE type IN ('Renewal', 'Issuance')
      AND status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval');

CREATE TABLE notification_events (
    id             text PRIMARY KEY,
    type           text NOT NULL,
    certificate_id text REFERENCES managed_certificates(id) ON DELETE CASCADE,
    channel        text NOT NULL CHECK (channel IN ('Email', 'Webhook')),
    recipient      text NOT NULL,
    subject        text NOT NULL DEFAULT '',
    message        text NOT NULL DEFAULT '',
    payload        jsonb NOT NULL DEFAULT '{}',
    -- Expiry alerts: one per certificate, threshold and channel, ever (a dedup key, not LIKE).
    threshold_days integer,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead', 'read')),
    retry_count    integer NOT NULL DEFAULT 0,
    next_retry_at  timestamptz,
    last_error     text,
    claimed_epoch  bigint,
    claimed_by     text,
    claimed_at     timestamptz,
    sent_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_events_pending ON notification_events (created_at)
    WHERE status = 'pending';
CREATE INDEX notification_events_retry_sweep ON notification_events (next_retry_at)
    WHERE status = 'failed';
CREATE UNIQUE INDEX notification_events_expiry_once
    ON notification_events (certificate_id, threshold_days, channel)
    WHERE type = 'ExpirationWarning';

CREATE TABLE certificate_revocations (
    id             bigserial PRIMARY KEY,
    certificate_id text REFERENCES managed_certificates(id) ON DELETE SET NULL,
    serial_number  text NOT NULL UNIQUE,  -- hex
    reason         text NOT NULL DEFAULT 'unspecified',
    revoked_by     text,
    revoked_at     timestamptz NOT NULL DEFAULT now(),
    issuer_id      text NOT NULL REFERENCES issuers(id),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_revocations_issuer ON certificate_revocations (issuer_id, revoked_at);

CREATE TABLE crl_cache (
    issuer_id              text PRIMARY KEY REFERENCES issuers(id) ON DELETE CASCADE,
    crl_der                bytea NOT NULL,
    crl_number             bigint NOT NULL,
    this_update            timestamptz NOT NULL,
    next_update            timestamptz NOT NULL,
    generated_at           timestamptz NOT NULL DEFAULT now(),
    generation_duration_ms integer,
    revoked_count          integer NOT NULL DEFAULT 0,
    epoch                  bigint,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crl_generation_events (
    id            bigserial PRIMARY KEY,
    issuer_id     text NOT NULL,
    crl_number    bigint,
    duration_ms   integer,
    revoked_count integer,
    epoch         bigint,
    replica       text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    succeeded     boolean NOT NULL,
    error         text
);

CREATE TABLE discovery_scans (
    id                 bigserial PRIMARY KEY,
    agent_id           text NOT NULL REFERENCES agents(id),
    source             text NOT NULL,
    directories        text[] NOT NULL DEFAULT '{}',
    certificates_found integer NOT NULL DEFAULT 0,
    certificates_new   integer NOT NULL DEFAULT 0,
    errors_count       integer NOT NULL DEFAULT 0,
    errors             text[] NOT NULL DEFAULT '{}',
    scan_duration_ms   integer,
    started_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz
);

CREATE TABLE discovered_certificates (
    id                     bigserial PRIMARY KEY,
    fingerprint_sha256     text NOT NULL,
    common_name            text,
    sans                   text[] NOT NULL DEFAULT '{}',
    serial_number          text,
    issuer_dn              text,
    subject_dn             text,
    not_before             timestamptz,
    not_after              timestamptz,
    key_algorithm          text,
    key_size               integer,
    is_ca                  boolean NOT NULL DEFAULT false,
    pem_data               text,
    source_path            text NOT NULL,
    source_format          text NOT NULL DEFAULT 'pem',
    agent_id               text NOT NULL REFERENCES agents(id),
    discovery_scan_id      bigint REFERENCES discovery_scans(id) ON DELETE SET NULL,
    managed_certificate_id text REFERENCES managed_certificates(id) ON DELETE SET NULL,
    status                 text NOT NULL DEFAULT 'Unmanaged'
                           CHECK (status IN ('Unmanaged', 'Managed', 'Dismissed')),
    first_seen_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at           timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (fingerprint_sha256, agent_id, source_path)
);

CREATE TABLE network_scan_targets (
    id                    text PRIMARY KEY,
    name                  text NOT NULL,
    cidrs                 text[] NOT NULL,
    ports                 integer[] NOT NULL DEFAULT '{443}',
    enabled               boolean NOT NULL DEFAULT true,
    scan_interval_hours   integer NOT NULL DEFAULT 6 CHECK (scan_interval_hours > 0),
    timeout_ms            integer NOT NULL DEFAULT 5000,
    last_scan_at          timestamptz,
    last_scan_duration_ms integer,
    last_scan_certs_found integer,
    -- A replica scanning a target holds it until scan_claimed_until (a crashed scanner's
    -- claim simply expires); no transaction stays open across the network probes.
    scan_claimed_by       text,
    scan_claimed_until    timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoint_health_checks (
    id                     text PRIMARY KEY,
    endpoint               text NOT NULL,  -- host:port
    certificate_id         text REFERENCES managed_certificates(id) ON DELETE SET NULL,
    expected_fingerprint   text,
    observed_fingerprint   text,
    status                 text NOT NULL DEFAULT 'unknown'
                           CHECK (status IN ('unknown', 'healthy', 'degraded', 'down', 'cert_mismatch')),
    consecutive_failures   integer NOT NULL DEFAULT 0,
    response_time_ms       integer,
    tls_version            text,
    cipher_suite           text,
    cert_subject           text,
    cert_issuer            text,
    cert_expiry            timestamptz,
    last_checked_at        timestamptz,
    last_success_at        timestamptz,
    last_failure_at        timestamptz,
    last_transition_at     timestamptz,
    failure_reason         text,
    degraded_threshold     integer NOT NULL DEFAULT 2,
    down_threshold         integer NOT NULL DEFAULT 5,
    check_interval_seconds integer NOT NULL DEFAULT 300,
    enabled                boolean NOT NULL DEFAULT true,
    acknowledged           boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE endpoint_health_history (
    id               bigserial PRIMARY KEY,
    health_check_id  text NOT NULL REFERENCES endpoint_health_checks(id) ON DELETE CASCADE,
    status           text NOT NULL,
    response_time_ms integer,
    fingerprint      text,
    failure_reason   text,
    checked_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoint_health_history_checked ON endpoint_health_history (checked_at);

CREATE TABLE acme_nonces (
    nonce      text PRIMARY KEY,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used       boolean NOT NULL DEFAULT false
);

CREATE TABLE acme_orders (
    order_id    text PRIMARY KEY,
    account_id  text NOT NULL,
    identifiers jsonb NOT NULL DEFAULT '[]',
    status      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    error       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE acme_authorizations (
    authz_id   text PRIMARY KEY,
    order_id   text NOT NULL REFERENCES acme_orders(order_id) ON DELETE CASCADE,
    identifier jsonb NOT NULL,
    status     text NOT NULL,
    expires_at timestamptz NOT NULL,
    wildcard   boolean NOT NULL DEFAULT false
);

CREATE TABLE sessions (
    id                  text PRIMARY KEY,
    actor_id            text NOT NULL,
    is_pre_login        boolean NOT NULL DEFAULT false,
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz
);

CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    actor         text NOT NULL,
    actor_type    text NOT NULL DEFAULT 'System',
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}',
    timestamp     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_resource ON audit_events (resource_type, resource_id, action);

-- Digest sends: once per period per recipient, recorded (certctl wrote nothing).
CREATE TABLE digest_sends (
    period_start timestamptz NOT NULL,
    recipient    text NOT NULL,
    status       text NOT NULL DEFAULT 'claimed' CHECK (status IN ('claimed', 'sent', 'failed')),
    epoch        bigint,
    replica      text,
    cert_count   integer,
    expiring     integer,
    sent_at      timestamptz,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period_start, recipient)
);
