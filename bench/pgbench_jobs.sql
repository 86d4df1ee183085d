-- The ceiling of job_processor's claim and completion (bench/jobs.py): the same `claim` and
-- `complete_batch` statements as loops/sql/job_processor.sql, each in its own autocommit
-- transaction as job_processor sends them, with no Python: each pgbench client plays one
-- replica with one worker and no work per job. bench/jobs.py checks that both statements are
-- the named queries verbatim (%(name)s written :name) and refuses to run if they drifted.
--
-- Variables: :limit, :replica, :actor and :versions (an empty JSON array: no-op jobs store no
-- certificate) come from pgbench -D; :ids, :attempts and :details are the claimed batch, which
-- the claim's result hands to the completion through \gset. pgbench keeps only one row, so the
-- claimed rows are aggregated into the arrays and the object complete_batch takes; the details
-- are the no-op handler's audit details in bench/jobs.py.
WITH claimed AS (
    WITH picked AS (
        SELECT id
        FROM leasectl_certs.jobs
        WHERE status = 'Pending'
          AND scheduled_at <= now()
          AND NOT (type = 'Deployment' AND agent_id IS NOT NULL)
        ORDER BY scheduled_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE leasectl_certs.jobs AS j
    SET status = 'Running',
        started_at = now(),
        completed_at = NULL,
        status_changed_at = now(),
        attempts = j.attempts + 1,
        claimed_by = :replica,
        last_error = NULL
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.type, j.certificate_id, j.agent_id, j.attempts, j.max_attempts
)
SELECT coalesce(array_agg(id), '{}') AS ids,
       coalesce(array_agg(attempts), '{}') AS attempts,
       coalesce(jsonb_object_agg(id, jsonb_build_object('type', type, 'attempts', attempts)),
                '{}') AS details
FROM claimed
\gset
WITH done AS (
    UPDATE leasectl_certs.jobs AS j
    SET status = 'Completed', completed_at = now(), status_changed_at = now(), last_error = NULL
    FROM unnest(:ids::text[], :attempts::integer[]) AS c(id, attempts)
    WHERE j.id = ANY(:ids::text[]) AND j.id = c.id AND j.attempts = c.attempts
      AND j.status = 'Running' AND j.claimed_by = :replica
    RETURNING j.id
), audited AS (
    INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
    SELECT :actor, 'System', 'job_completed', 'job', done.id, :details::jsonb -> done.id
    FROM done
), stored AS (
    INSERT INTO leasectl_certs.certificate_versions
        (certificate_id, serial_number, not_before, not_after, fingerprint_sha256, pem_chain,
         key_algorithm, key_size, job_id)
    SELECT v.certificate_id, v.serial, v.not_before, v.not_after, v.fingerprint, v.pem_chain,
           v.key_algorithm, v.key_size, v.job_id
    FROM jsonb_to_recordset(:versions::jsonb)
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
SELECT id FROM done;
