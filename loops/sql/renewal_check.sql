-- name: mark_expiry_status
-- Active certificates inside their renewal window become Expiring; Active or Expiring ones
-- past expires_at become Expired. The status guard in the WHERE makes it idempotent and
-- leaves every other status (RenewalInProgress, Failed, Revoked, ...) alone.
UPDATE leasectl_certs.managed_certificates AS c
SET status = CASE WHEN c.expires_at <= now() THEN 'Expired' ELSE 'Expiring' END,
    updated_at = now()
WHERE c.status IN ('Active', 'Expiring')
  AND c.expires_at IS NOT NULL
  AND (c.expires_at <= now()
       OR (c.status = 'Active'
           AND c.expires_at < now() + make_interval(days => coalesce(
               (SELECT p.renewal_window_days FROM leasectl_certs.renewal_policies AS p
                WHERE p.id = c.renewal_policy_id), %(default_window)s))))
RETURNING c.id, c.status

-- name: create_renewal_jobs
-- One Renewal job per certificate of an enabled local issuer inside its policy's renewal
-- window whose policy allows auto_renew. The unique partial index jobs_one_open_renewal is the dedup: a certificate that
-- already has an open renewal/issuance job (created by another replica a moment ago, or by an
-- operator) gets nothing, so concurrent ticks cannot create two. The certificate moves to
-- RenewalInProgress and one audit row is written, in the same statement.
WITH due AS (
    SELECT c.id, coalesce(p.max_retries, %(default_max_attempts)s) AS max_attempts,
           c.expires_at
    FROM leasectl_certs.managed_certificates AS c
    -- like certctl's "an issuer connector is registered": only issuers leasectl can sign with
    JOIN leasectl_certs.issuers AS i ON i.id = c.issuer_id AND i.enabled AND i.type = 'local'
    LEFT JOIN leasectl_certs.renewal_policies AS p ON p.id = c.renewal_policy_id
    WHERE c.status IN ('Active', 'Expiring', 'Expired')
      AND c.expires_at IS NOT NULL
      AND coalesce(p.auto_renew, true)
      AND c.expires_at < now() + make_interval(
          days => coalesce(p.renewal_window_days, %(default_window)s))
      -- not needed for correctness (the index is the dedup); keeps busy rows out of the batch
      AND NOT EXISTS (
          SELECT 1 FROM leasectl_certs.jobs AS o
          WHERE o.certificate_id = c.id AND o.type IN ('Renewal', 'Issuance')
            AND o.status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval'))
    ORDER BY c.expires_at, c.id
    LIMIT %(limit)s
    -- The index alone misses one race: another replica's job for this certificate can be
    -- created AND completed (no longer open) after this statement's snapshot, and a second
    -- job would be created. Locking the row re-checks it at its latest version, where it is
    -- RenewalInProgress or already renewed out of the window; rows another tick holds are
    -- skipped (it is handling them).
    FOR UPDATE OF c SKIP LOCKED
),
created AS (
    INSERT INTO leasectl_certs.jobs (id, type, certificate_id, status, max_attempts, scheduled_at)
    SELECT 'job-' || gen_random_uuid(), 'Renewal', due.id, 'Pending',
           greatest(due.max_attempts, 1), now()
    FROM due
    ON CONFLICT (certificate_id)
        WHERE type IN ('Renewal', 'Issuance')
          AND status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval')
    DO NOTHING
    RETURNING id, certificate_id
),
marked AS (
    UPDATE leasectl_certs.managed_certificates AS c
    SET status = 'RenewalInProgress', updated_at = now()
    FROM created
    WHERE c.id = created.certificate_id
    RETURNING c.id, c.expires_at
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'renewal_job_created', 'certificate', m.id,
       jsonb_build_object('job_id', created.id,
                          'days_until_expiry',
                          trunc(extract(epoch FROM m.expires_at - now()) / 86400))
FROM marked AS m JOIN created ON created.certificate_id = m.id
RETURNING resource_id

-- name: alert_candidates
-- (certificate, threshold) pairs that are due an expiry alert and have neither an alert nor a
-- recorded skip yet. A threshold T is due once trunc(days until expiry) <= T.
SELECT c.id, c.common_name, c.expires_at, c.owner_id, o.email AS owner_email,
       t.threshold, p.alert_channels, p.alert_severity_map,
       extract(epoch FROM c.expires_at - now())::float8 / 86400.0 AS days_until
FROM leasectl_certs.managed_certificates AS c
LEFT JOIN leasectl_certs.renewal_policies AS p ON p.id = c.renewal_policy_id
LEFT JOIN leasectl_certs.owners AS o ON o.id = c.owner_id
CROSS JOIN LATERAL (
    SELECT DISTINCT (e #>> '{}')::numeric::int AS threshold
    FROM jsonb_array_elements(coalesce(p.alert_thresholds_days, %(default_thresholds)s::jsonb))
        AS e
    WHERE jsonb_typeof(e) = 'number'
) AS t
WHERE c.status NOT IN ('Archived', 'Revoked')
  AND c.expires_at IS NOT NULL
  AND trunc(extract(epoch FROM c.expires_at - now()) / 86400) <= t.threshold
  AND NOT EXISTS (
      SELECT 1 FROM leasectl_certs.notification_events AS n
      WHERE n.certificate_id = c.id AND n.type = 'ExpirationWarning'
        AND n.threshold_days = t.threshold)
  AND NOT EXISTS (
      SELECT 1 FROM leasectl_certs.audit_events AS a
      WHERE a.resource_type = 'certificate' AND a.resource_id = c.id
        AND a.action IN ('expiration_alert_skipped_no_recipient',
                         'expiration_alert_skipped_no_channels',
                         'expiration_alert_skipped_invalid_channel')
        AND a.details ->> 'threshold_days' = t.threshold::text)
ORDER BY c.expires_at, c.id, t.threshold DESC
LIMIT %(limit)s

-- name: queue_alerts
-- Queue alerts for the notification loops. The unique index notification_events_expiry_once
-- (certificate, threshold, channel) is the dedup: a second replica's identical insert does
-- nothing, so each alert exists once, ever. Each queued alert is audited once.
WITH queued AS (
    INSERT INTO leasectl_certs.notification_events
        (id, type, certificate_id, channel, recipient, subject, message, payload,
         threshold_days, status)
    SELECT 'ntf-' || gen_random_uuid(), 'ExpirationWarning', a.certificate_id, a.channel,
           a.recipient, a.subject, a.message, a.payload::jsonb, a.threshold, 'pending'
    FROM unnest(%(certificate_ids)s::text[], %(channels)s::text[], %(recipients)s::text[],
                %(subjects)s::text[], %(messages)s::text[], %(payloads)s::text[],
                %(thresholds)s::int[])
        AS a(certificate_id, channel, recipient, subject, message, payload, threshold)
    ON CONFLICT (certificate_id, threshold_days, channel) WHERE type = 'ExpirationWarning'
    DO NOTHING
    RETURNING id, certificate_id, channel, threshold_days, payload
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'expiration_alert_queued', 'certificate', q.certificate_id,
       jsonb_build_object('notification_id', q.id, 'channel', q.channel,
                          'threshold_days', q.threshold_days,
                          'severity_tier', q.payload ->> 'severity',
                          'days_until_expiry', q.payload -> 'days_until_expiry')
FROM queued AS q
RETURNING resource_id

-- name: lock_alert_skips
-- Skips are recorded as audit rows, which have no natural unique key; this transaction lock
-- serializes the recording across replicas so the NOT EXISTS below sees the other's rows.
SELECT pg_advisory_xact_lock(hashtextextended('leasectl.loops.renewal_check.alert_skips', 0))

-- name: record_skips
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', s.action, 'certificate', s.certificate_id, s.details::jsonb
FROM unnest(%(actions)s::text[], %(certificate_ids)s::text[], %(details)s::text[],
            %(thresholds)s::int[]) AS s(action, certificate_id, details, threshold)
WHERE NOT EXISTS (
    SELECT 1 FROM leasectl_certs.audit_events AS a
    WHERE a.resource_type = 'certificate' AND a.resource_id = s.certificate_id
      AND a.action = s.action AND a.details ->> 'threshold_days' = s.threshold::text)
RETURNING resource_id
