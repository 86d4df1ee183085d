-- name: claim
-- Claim up to a batch of due Pending jobs in one statement: SKIP LOCKED lets every replica
-- claim at once without waiting on each other, and the claim stamps started_at, increments
-- attempts (the claim token: a later claim of the same job has a larger value) and records
-- the claiming replica. Agent-routed Deployment jobs belong to the agent's own claim and are
-- never touched here (certctl flipped them to Running and then skipped them).
WITH picked AS (
    SELECT id
    FROM jobs
    WHERE status = 'Pending'
      AND scheduled_at <= now()
      AND NOT (type = 'Deployment' AND agent_id IS NOT NULL)
    ORDER BY scheduled_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
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

-- name: job_subject
-- What an Issuance/Renewal job needs to issue: the certificate, its issuer's CA, its profile.
SELECT c.id, c.common_name, c.sans, c.issuer_id,
       i.name AS issuer_name, i.type AS issuer_type, i.enabled AS issuer_enabled,
       i.ca_cert_pem, i.ca_key_pem,
       p.allow_short_lived, p.max_ttl_seconds
FROM managed_certificates AS c
LEFT JOIN issuers AS i ON i.id = c.issuer_id
LEFT JOIN certificate_profiles AS p ON p.id = c.certificate_profile_id
WHERE c.id = %(certificate_id)s

-- name: set_issuer_ca
-- Give a local issuer its CA once: the guard makes a concurrent second creator a no-op, and
-- it then reads the winner's CA with issuer_ca.
UPDATE issuers
SET ca_cert_pem = %(cert_pem)s, ca_key_pem = %(key_pem)s
WHERE id = %(issuer_id)s AND type = 'local' AND ca_key_pem IS NULL

-- name: issuer_ca
SELECT ca_cert_pem, ca_key_pem FROM issuers WHERE id = %(issuer_id)s

-- name: complete
-- Finish a job only if this claim still owns it: Running, claimed by this replica, and the
-- attempt it claimed. A job reaped by job_timeout (or re-claimed later) matches nothing, and
-- the transaction that would store its certificate is rolled back.
UPDATE jobs
SET status = 'Completed', completed_at = now(), status_changed_at = now(), last_error = NULL
WHERE id = %(id)s AND status = 'Running' AND claimed_by = %(replica)s
  AND attempts = %(attempts)s
RETURNING id

-- name: store_version
-- One version per job (unique index on job_id): a re-run of the same job cannot store twice.
INSERT INTO certificate_versions
    (certificate_id, serial_number, not_before, not_after, fingerprint_sha256, pem_chain,
     key_algorithm, key_size, job_id)
VALUES
    (%(certificate_id)s, %(serial)s, %(not_before)s, %(not_after)s, %(fingerprint)s,
     %(pem_chain)s, %(key_algorithm)s, %(key_size)s, %(job_id)s)
RETURNING id

-- name: activate_certificate
UPDATE managed_certificates
SET expires_at = %(not_after)s, status = 'Active', last_renewal_at = now(), updated_at = now()
WHERE id = %(certificate_id)s

-- name: fail
-- Fail a job under the same ownership guard as complete.
UPDATE jobs
SET status = 'Failed', completed_at = now(), status_changed_at = now(), last_error = %(error)s
WHERE id = %(id)s AND status = 'Running' AND claimed_by = %(replica)s
  AND attempts = %(attempts)s
RETURNING id

-- name: release
-- A tick told to stop hands back the jobs it claimed but never started: Pending again, and
-- the attempt it did not make is not counted.
UPDATE jobs
SET status = 'Pending', started_at = NULL, status_changed_at = now(), claimed_by = NULL,
    attempts = attempts - 1
WHERE id = %(id)s AND status = 'Running' AND claimed_by = %(replica)s
  AND attempts = %(attempts)s

-- name: audit
INSERT INTO audit_events (actor, actor_type, action, resource_type, resource_id, details)
VALUES (%(actor)s, 'System', %(action)s, 'job', %(job_id)s, %(details)s)
