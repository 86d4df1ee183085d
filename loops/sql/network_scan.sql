-- name: ensure_sentinel_agent
-- The agent row discovered certificates hang off (certctl's server-scanner sentinel).
INSERT INTO leasectl_certs.agents (id, name, hostname, status)
VALUES (%(agent_id)s, %(agent_id)s, 'leasectl', 'Online')
ON CONFLICT DO NOTHING

-- name: claim_target
-- Claim one due target (never scanned, or last scanned more than its scan_interval_hours
-- ago) that nobody holds. SKIP LOCKED keeps concurrent claimers from waiting on each other,
-- and the claim is a lease in the row (scan_claimed_until), not an open transaction, so no
-- transaction spans the probes; a crashed scanner's claim expires. A target this replica id
-- still holds is taken again at once: a tick scans its targets one after another and each
-- ends finished or handed back, and ticks never overlap on a replica, so such a claim is an
-- ended tick's (its work connection died before it could hand the target back).
WITH due AS (
    SELECT id
    FROM leasectl_certs.network_scan_targets
    WHERE enabled
      AND (last_scan_at IS NULL
           OR last_scan_at < now() - make_interval(hours => scan_interval_hours))
      AND (scan_claimed_until IS NULL OR scan_claimed_until < now()
           OR scan_claimed_by = %(replica)s)
    ORDER BY last_scan_at NULLS FIRST, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE leasectl_certs.network_scan_targets AS t
SET scan_claimed_by = %(replica)s,
    scan_claimed_until = now() + %(ttl_seconds)s * interval '1 second'
FROM due
WHERE t.id = due.id
RETURNING t.id, t.name, t.cidrs, t.ports, t.timeout_ms, t.scan_claimed_until

-- name: release_target
-- A scan that failed hands the target back without recording a scan.
UPDATE leasectl_certs.network_scan_targets
SET scan_claimed_by = NULL, scan_claimed_until = NULL
WHERE id = %(id)s AND scan_claimed_by = %(replica)s AND scan_claimed_until = %(token)s

-- name: insert_scan
INSERT INTO leasectl_certs.discovery_scans
    (agent_id, source, directories, errors_count, errors, scan_duration_ms, started_at,
     completed_at)
VALUES
    (%(agent_id)s, %(source)s, %(directories)s, %(errors_count)s, %(errors)s,
     %(duration_ms)s, %(started_at)s, now())
RETURNING id

-- name: finish_scan
UPDATE leasectl_certs.discovery_scans
SET certificates_found = %(found)s, certificates_new = %(new)s
WHERE id = %(scan_id)s

-- name: finish_target
-- Record the scan and drop the claim, only if this claim still holds the target.
UPDATE leasectl_certs.network_scan_targets
SET last_scan_at = now(), last_scan_duration_ms = %(duration_ms)s,
    last_scan_certs_found = %(found)s, scan_claimed_by = NULL, scan_claimed_until = NULL,
    updated_at = now()
WHERE id = %(id)s AND scan_claimed_by = %(replica)s AND scan_claimed_until = %(token)s
RETURNING id

-- name: audit
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
VALUES (%(actor)s, 'System', 'discovery_scan_completed', 'network_scan_target', %(id)s,
        %(details)s)
