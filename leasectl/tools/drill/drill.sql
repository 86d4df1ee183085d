-- name: seed_owner
-- The drill's owner and local issuer; jobs issue certificates through that issuer's CA.
INSERT INTO leasectl_certs.owners (id, name, email) VALUES (%(owner_id)s, 'leasectl drill', 'drill@localhost')
ON CONFLICT (id) DO NOTHING

-- name: seed_issuer
INSERT INTO leasectl_certs.issuers (id, name, type) VALUES (%(issuer_id)s, 'leasectl drill CA', 'local')
ON CONFLICT (id) DO NOTHING

-- name: insert_notification
-- One webhook notification; its id is the Idempotency-Key the sink sees.
INSERT INTO leasectl_certs.notification_events (id, type, channel, recipient, subject, message, payload)
VALUES (%(id)s, 'DrillPing', 'Webhook', 'drill-sink', %(subject)s, %(message)s, %(payload)s)

-- name: insert_job
-- One Issuance job for its own certificate (one open issuance per certificate is a constraint).
WITH cert AS (
    INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, owner_id, issuer_id, status)
    VALUES (%(cert_id)s, %(cert_id)s, %(common_name)s, %(owner_id)s, %(issuer_id)s, 'Pending')
    RETURNING id
)
INSERT INTO leasectl_certs.jobs (id, type, certificate_id, status, max_attempts)
SELECT %(job_id)s, 'Issuance', cert.id, 'Pending', 5 FROM cert

-- name: revoke_one
-- A revocation, so the CRL loop has something new to sign.
INSERT INTO leasectl_certs.certificate_revocations (serial_number, reason, revoked_by, issuer_id)
VALUES (%(serial)s, 'keyCompromise', 'leasectl drill', %(issuer_id)s)

-- name: notifications_state
-- Final state of the drill's notifications.
SELECT id, status, last_error, retry_count, claimed_epoch, claimed_by, claimed_lease
FROM leasectl_certs.notification_events WHERE id LIKE %(prefix)s

-- name: jobs_state
SELECT id, status, last_error, attempts, max_attempts
FROM leasectl_certs.jobs WHERE id LIKE %(prefix)s

-- name: notifications_open
-- How many of the drill's notifications are not yet final (sent or dead).
SELECT count(*) FROM leasectl_certs.notification_events
WHERE id LIKE %(prefix)s AND status NOT IN ('sent', 'dead')

-- name: notifications_open_states
-- The drill's notifications not yet final, with what says when the loops will take them
-- again (delivery.fate): ages on the database's clock.
SELECT id, status, coalesce(last_error, '') <> '', retry_count, claimed_lease,
       extract(epoch FROM now() - claimed_at)::float8,
       extract(epoch FROM next_retry_at - now())::float8
FROM leasectl_certs.notification_events
WHERE id LIKE %(prefix)s AND status NOT IN ('sent', 'dead')

-- name: jobs_open
-- Jobs not yet final: Completed, or Failed with attempts exhausted, or Cancelled.
SELECT count(*) FROM leasectl_certs.jobs
WHERE id LIKE %(prefix)s
  AND NOT (status IN ('Completed', 'Cancelled')
           OR (status = 'Failed' AND attempts >= max_attempts))

-- name: crl_events
-- CRL numbers in the order they were generated, with the epoch that generated them.
SELECT issuer_id, crl_number, epoch, replica, started_at, succeeded
FROM leasectl_certs.crl_generation_events WHERE succeeded ORDER BY id

-- name: tick_ledger
SELECT loop, tick_at, epoch, replica, outcome, started_at, finished_at
FROM leasectl_ticks ORDER BY loop, tick_at

-- name: lease_events
-- The lease audit trail (DB clock), to tighten log-based ends of graceful releases.
SELECT lease, epoch, replica, event, reason, extract(epoch FROM at)::float8 AS at
FROM leasectl_lease_events ORDER BY id

-- name: lock_backend
-- The lock connection of a replica: its application_name is leasectl/<replica-id>, and it is
-- the backend that holds the advisory locks.
SELECT a.pid FROM pg_stat_activity a
WHERE a.application_name = %(application_name)s
  AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory')

-- name: terminate
SELECT pg_terminate_backend(%(pid)s)

-- name: clock
SELECT extract(epoch FROM clock_timestamp())::float8

-- name: tick_committed_before_takeover
-- Did this old-epoch completion reach the ledger before the next epoch was acquired? The fenced
-- finish guarantees it (the epoch bump waits for the row lock a finishing tick holds), but its
-- log line can still be written after SIGCONT when the process stopped between the commit and
-- the log call. NULL: no such completed row.
SELECT t.finished_at <= coalesce(
           (SELECT min(e.at) FROM leasectl_lease_events e
            WHERE e.lease = %(lease)s AND e.event = 'acquired' AND e.epoch > %(epoch)s),
           'infinity'::timestamptz) + interval '50 milliseconds'
FROM leasectl_ticks t
WHERE t.loop = %(loop)s AND t.tick_at = %(tick_at)s::timestamptz AND t.epoch = %(epoch)s
  AND t.outcome = 'ok'

-- name: work_backends
-- The replicas' work-pool backends (application_name leasectl-work/<replica-id>), never a lock
-- connection: what a backend-kill storm terminates.
SELECT pid FROM pg_stat_activity
WHERE application_name LIKE %(pattern)s AND pid <> pg_backend_pid()

-- name: acquired_epochs
-- Every acquisition the database kept, in commit order: epochs must strictly increase per lease.
SELECT lease, epoch, replica FROM leasectl_lease_events
WHERE event = 'acquired' AND epoch IS NOT NULL ORDER BY id
