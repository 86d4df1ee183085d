-- name: claim
-- Claim up to a batch of due Pending jobs in one statement: SKIP LOCKED lets every replica
-- claim at once without waiting on each other, and the claim stamps started_at, increments
-- attempts (the claim token: a later claim of the same job has a larger value) and records
-- the claiming replica. Agent-routed Deployment jobs belong to the agent's own claim and are
-- never touched here (certctl flipped them to Running and then skipped them).
-- With adopt (a tick's first claim only) the batch starts with the jobs this replica id left
-- Running: a loop's ticks never overlap on a replica, so at a tick's first claim they belong
-- to an earlier tick that has ended (its work connection died after the claim committed, or
-- before it could complete or fail them) or to an earlier process under this id. They are run
-- again at once, under a new attempt (so a late completion of the old claim matches nothing),
-- instead of waiting running_timeout for job_timeout. A job at its last attempt is left to
-- job_timeout, so a job that kills its process every time still ends Failed.
WITH adopted AS (
    SELECT id, started_at AS sort_at
    FROM leasectl_certs.jobs
    WHERE %(adopt)s AND status = 'Running' AND claimed_by = %(replica)s
      AND agent_id IS NULL AND attempts < max_attempts
    ORDER BY started_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), pending AS (
    SELECT id, scheduled_at AS sort_at
    FROM leasectl_certs.jobs
    WHERE status = 'Pending'
      AND scheduled_at <= now()
      AND NOT (type = 'Deployment' AND agent_id IS NOT NULL)
    ORDER BY scheduled_at, id
    LIMIT greatest(0, %(limit)s - (SELECT count(*) FROM adopted))
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM adopted UNION ALL SELECT id FROM pending
)
UPDATE leasectl_certs.jobs AS j
SET status = 'Running',
    started_at = now(),
    completed_at = NULL,
    status_changed_at = now(),
    attempts = j.attempts + 1,
    claimed_by = %(replica)s,
    last_error = NULL
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.type, j.certificate_id, j.agent_id, j.attempts, j.max_attempts

-- name: job_subjects
-- What Issuance/Renewal jobs need to issue - the certificate, its issuer's CA, its profile -
-- for a whole claimed batch in one statement (one round trip per batch, not one transaction
-- per job).
SELECT c.id, c.common_name, c.sans, c.issuer_id,
       i.name AS issuer_name, i.type AS issuer_type, i.enabled AS issuer_enabled,
       i.ca_cert_pem, i.ca_key_pem,
       p.allow_short_lived, p.max_ttl_seconds
FROM leasectl_certs.managed_certificates AS c
LEFT JOIN leasectl_certs.issuers AS i ON i.id = c.issuer_id
LEFT JOIN leasectl_certs.certificate_profiles AS p ON p.id = c.certificate_profile_id
WHERE c.id = ANY(%(certificate_ids)s::text[])

-- name: set_issuer_ca
-- Give a local issuer its CA once: the guard makes a concurrent second creator a no-op, and
-- it then reads the winner's CA with issuer_ca.
UPDATE leasectl_certs.issuers
SET ca_cert_pem = %(cert_pem)s, ca_key_pem = %(key_pem)s
WHERE id = %(issuer_id)s AND type = 'local' AND ca_key_pem IS NULL

-- name: issuer_ca
SELECT ca_cert_pem, ca_key_pem FROM leasectl_certs.issuers WHERE id = %(issuer_id)s

-- name: complete_batch
-- Complete a batch of jobs in one statement, each only if this claim still owns it: Running,
-- claimed by this replica, and the attempt it claimed (ids and attempts are parallel arrays).
-- A job reaped by job_timeout or re-claimed since - by another replica, or by this same replica
-- id after a restart, which only the attempt tells apart - matches nothing and is left alone.
-- Only matched jobs get their job_completed audit row (details: one JSON object by job id) and
-- their certificate version (versions: a JSON array, one object per Issuance/Renewal job; one
-- version per job by the unique index on job_id), and each stored version makes its
-- certificate Active with the new expiry. One statement: atomic in autocommit, one round trip.
WITH done AS (
    UPDATE leasectl_certs.jobs AS j
    SET status = 'Completed', completed_at = now(), status_changed_at = now(), last_error = NULL
    FROM unnest(%(ids)s::text[], %(attempts)s::integer[]) AS c(id, attempts)
    WHERE j.id = ANY(%(ids)s::text[]) AND j.id = c.id AND j.attempts = c.attempts
      AND j.status = 'Running' AND j.claimed_by = %(replica)s
    RETURNING j.id
), audited AS (
    INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
    SELECT %(actor)s, 'System', 'job_completed', 'job', done.id, %(details)s::jsonb -> done.id
    FROM done
), stored AS (
    INSERT INTO leasectl_certs.certificate_versions
        (certificate_id, serial_number, not_before, not_after, fingerprint_sha256, pem_chain,
         key_algorithm, key_size, job_id)
    SELECT v.certificate_id, v.serial, v.not_before, v.not_after, v.fingerprint, v.pem_chain,
           v.key_algorithm, v.key_size, v.job_id
    FROM jsonb_to_recordset(%(versions)s::jsonb)
        AS v(job_id text, certificate_id text, serial text, not_before timestamptz,
             not_after timestamptz, fingerprint text, pem_chain text, key_algorithm text,
             key_size integer)
    JOIN done ON done.id = v.job_id
    RETURNING certificate_id, not_after
), activated AS (
    UPDATE leasectl_certs.managed_certificates AS c
    SET expires_at = stored.not_after, status = 'Active', last_renewal_at = now(),
        updated_at = now()
    FROM stored
    WHERE c.id = stored.certificate_id
)
SELECT id FROM done

-- name: fail
-- Fail a job under the same ownership guard as complete_batch (one job: the retry path).
UPDATE leasectl_certs.jobs
SET status = 'Failed', completed_at = now(), status_changed_at = now(), last_error = %(error)s
WHERE id = %(id)s AND status = 'Running' AND claimed_by = %(replica)s
  AND attempts = %(attempts)s
RETURNING id

-- name: release
-- A tick told to stop hands back the jobs it claimed but never started: Pending again, and
-- the attempt it did not make is not counted. Guarded per job like complete_batch.
UPDATE leasectl_certs.jobs AS j
SET status = 'Pending', started_at = NULL, status_changed_at = now(), claimed_by = NULL,
    attempts = j.attempts - 1
FROM unnest(%(ids)s::text[], %(attempts)s::integer[]) AS c(id, attempts)
WHERE j.id = ANY(%(ids)s::text[]) AND j.id = c.id AND j.attempts = c.attempts
  AND j.status = 'Running' AND j.claimed_by = %(replica)s

-- name: audit
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
VALUES (%(actor)s, 'System', %(action)s, 'job', %(job_id)s, %(details)s)
