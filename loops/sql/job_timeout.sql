-- name: reap_awaiting
-- Jobs stuck waiting for a CSR or an approval too long are failed. One guarded statement: the
-- WHERE is re-checked on the current row version, so a job approved or given its CSR in the
-- meantime is left alone (certctl read, then wrote the whole row back). The age counts from
-- entering the state (status_changed_at), not from job creation.
WITH reaped AS (
    UPDATE leasectl_certs.jobs
    SET status = 'Failed',
        last_error = 'timed out in ' || status || ' after '
            || CASE WHEN status = 'AwaitingCSR' THEN %(csr_label)s ELSE %(approval_label)s END,
        completed_at = now(),
        status_changed_at = now()
    WHERE (status = 'AwaitingCSR'
           AND status_changed_at < now() - %(csr_seconds)s * interval '1 second')
       OR (status = 'AwaitingApproval'
           AND status_changed_at < now() - %(approval_seconds)s * interval '1 second')
    RETURNING id, last_error, status_changed_at
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'job_timeout', 'job', r.id,
       jsonb_build_object('reason', CASE WHEN r.last_error LIKE '%%AwaitingCSR%%'
                                         THEN 'csr_timeout' ELSE 'approval_timeout' END,
                          'error', r.last_error)
FROM reaped AS r
RETURNING resource_id

-- name: reap_offline_agents
-- Running jobs whose agent has sent no heartbeat for longer than the TTL are failed.
WITH reaped AS (
    UPDATE leasectl_certs.jobs AS j
    SET status = 'Failed',
        last_error = 'agent ' || a.id || ' offline (no heartbeat for more than '
            || %(ttl_label)s || ')',
        completed_at = now(),
        status_changed_at = now()
    FROM leasectl_certs.agents AS a
    WHERE a.id = j.agent_id
      AND j.status = 'Running'
      AND a.last_heartbeat_at IS NOT NULL
      AND a.last_heartbeat_at < now() - %(ttl_seconds)s * interval '1 second'
    RETURNING j.id, j.agent_id, a.last_heartbeat_at
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'job_offline_agent_reap', 'job', r.id,
       jsonb_build_object('agent_id', r.agent_id, 'last_heartbeat_at', r.last_heartbeat_at)
FROM reaped AS r
RETURNING resource_id

-- name: reap_running
-- Server-side jobs Running longer than the running timeout: the replica that claimed them
-- crashed or hung. Failing them lets job_retry put them back, so a crash loses no job; the
-- crashed claim's guarded completion can then no longer match.
WITH reaped AS (
    UPDATE leasectl_certs.jobs
    SET status = 'Failed',
        last_error = 'running for more than ' || %(running_label)s
            || ' (claimed by ' || coalesce(claimed_by, 'unknown') || ')',
        completed_at = now(),
        status_changed_at = now()
    WHERE status = 'Running'
      AND agent_id IS NULL
      AND coalesce(started_at, status_changed_at)
          < now() - %(running_seconds)s * interval '1 second'
    RETURNING id, claimed_by, started_at, attempts
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'job_running_timeout', 'job', r.id,
       jsonb_build_object('claimed_by', r.claimed_by, 'started_at', r.started_at,
                          'attempts', r.attempts)
FROM reaped AS r
RETURNING resource_id
