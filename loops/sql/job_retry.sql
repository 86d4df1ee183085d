-- name: retry
-- Failed -> Pending for jobs with attempts left, in one statement: SKIP LOCKED so replicas
-- share the work instead of both retrying (and auditing) the same row, and the backoff puts
-- scheduled_at at now + base * 2^(attempts - 1), capped, so job_processor claims it only then.
-- A job whose certificate already has another open renewal/issuance job stays Failed (the
-- unique index allows one open job per certificate; the other one is doing the work).
WITH due AS (
    SELECT j.id
    FROM leasectl_certs.jobs AS j
    WHERE j.status = 'Failed'
      AND j.attempts < j.max_attempts
      AND NOT (j.type IN ('Renewal', 'Issuance') AND EXISTS (
          SELECT 1 FROM leasectl_certs.jobs AS o
          WHERE o.certificate_id = j.certificate_id AND o.id <> j.id
            AND o.type IN ('Renewal', 'Issuance')
            AND o.status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval')))
    ORDER BY j.status_changed_at, j.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
retried AS (
    UPDATE leasectl_certs.jobs AS j
    SET status = 'Pending',
        scheduled_at = now() + least(
            %(base)s * power(2, greatest(j.attempts - 1, 0)), %(cap)s) * interval '1 second',
        status_changed_at = now(),
        started_at = NULL,
        completed_at = NULL,
        claimed_by = NULL
    FROM due
    WHERE j.id = due.id AND j.status = 'Failed'
    RETURNING j.id, j.attempts, j.max_attempts, j.scheduled_at, j.last_error
),
audited AS (
    INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
    SELECT %(actor)s, 'System', 'job_retry', 'job', r.id,
           jsonb_build_object('old_status', 'Failed', 'new_status', 'Pending',
                              'attempts', r.attempts, 'max_attempts', r.max_attempts,
                              'scheduled_at', r.scheduled_at, 'last_error', r.last_error)
    FROM retried AS r
)
SELECT id, attempts, max_attempts, scheduled_at FROM retried

-- name: fail_exhausted_certificates
-- A certificate waiting on a renewal/issuance job (RenewalInProgress, or Pending = never
-- issued) whose latest such job failed its last attempt is itself Failed, once (the status
-- guard makes a second run a no-op). Audited in the same statement.
WITH exhausted AS (
    UPDATE leasectl_certs.managed_certificates AS c
    SET status = 'Failed', updated_at = now()
    FROM leasectl_certs.jobs AS j
    WHERE j.certificate_id = c.id
      AND j.type IN ('Renewal', 'Issuance')
      AND j.status = 'Failed'
      AND j.attempts >= j.max_attempts
      AND c.status IN ('RenewalInProgress', 'Pending')
      AND NOT EXISTS (
          SELECT 1 FROM leasectl_certs.jobs AS later
          WHERE later.certificate_id = c.id AND later.type IN ('Renewal', 'Issuance')
            AND (later.created_at, later.id) > (j.created_at, j.id))
    RETURNING c.id, j.id AS job_id, j.attempts, j.last_error
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'certificate_renewal_exhausted', 'certificate', e.id,
       jsonb_build_object('job_id', e.job_id, 'attempts', e.attempts, 'last_error', e.last_error)
FROM exhausted AS e
RETURNING resource_id
