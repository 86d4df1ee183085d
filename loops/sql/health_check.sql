-- name: claim_due
-- Claim due checks (never checked, or last checked more than check_interval_seconds ago) by
-- stamping last_checked_at: SKIP LOCKED lets replicas split the work, and once stamped a check
-- is no longer due for anyone, so each endpoint is probed once per interval cluster-wide and
-- a failure is counted once (certctl probed on every replica and double-counted: defect #13).
-- The stamped value is the claim token the result write is guarded by.
WITH due AS (
    SELECT id
    FROM leasectl_certs.endpoint_health_checks
    WHERE enabled
      AND (last_checked_at IS NULL
           OR last_checked_at + make_interval(secs => check_interval_seconds) < now())
    ORDER BY last_checked_at NULLS FIRST, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE leasectl_certs.endpoint_health_checks AS h
SET last_checked_at = clock_timestamp()
FROM due
WHERE h.id = due.id
RETURNING h.id, h.endpoint, h.expected_fingerprint, h.status, h.consecutive_failures,
          h.degraded_threshold, h.down_threshold, h.last_checked_at

-- name: record_success
UPDATE leasectl_certs.endpoint_health_checks
SET status = %(status)s,
    consecutive_failures = 0,
    observed_fingerprint = %(fingerprint)s,
    response_time_ms = %(response_time_ms)s,
    tls_version = %(tls_version)s,
    cipher_suite = %(cipher)s,
    cert_subject = %(subject)s,
    cert_issuer = %(issuer)s,
    cert_expiry = %(expiry)s,
    last_success_at = now(),
    failure_reason = NULL,
    last_transition_at = CASE WHEN status <> %(status)s THEN now() ELSE last_transition_at END,
    acknowledged = CASE WHEN status <> %(status)s THEN false ELSE acknowledged END,
    updated_at = now()
WHERE id = %(id)s AND last_checked_at = %(token)s
RETURNING id

-- name: record_failure
UPDATE leasectl_certs.endpoint_health_checks
SET status = %(status)s,
    consecutive_failures = %(failures)s,
    response_time_ms = %(response_time_ms)s,
    last_failure_at = now(),
    failure_reason = %(reason)s,
    last_transition_at = CASE WHEN status <> %(status)s THEN now() ELSE last_transition_at END,
    acknowledged = CASE WHEN status <> %(status)s THEN false ELSE acknowledged END,
    updated_at = now()
WHERE id = %(id)s AND last_checked_at = %(token)s
RETURNING id

-- name: insert_history
INSERT INTO leasectl_certs.endpoint_health_history
    (health_check_id, status, response_time_ms, fingerprint, failure_reason)
VALUES (%(id)s, %(status)s, %(response_time_ms)s, %(fingerprint)s, %(reason)s)

-- name: audit_transition
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
VALUES (%(actor)s, 'System', 'health_check_status_transition', 'endpoint_health_check',
        %(id)s, %(details)s)

-- name: prune_history
DELETE FROM leasectl_certs.endpoint_health_history
WHERE checked_at < now() - make_interval(days => %(days)s)
