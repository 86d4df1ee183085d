-- name: claim_pending
-- notification_send's claim, run after lease.guard() in the same transaction. First every row
-- this lease left 'sending': under an older epoch (the old holder may or may not have
-- delivered it) or under this one, by an earlier tick - a loop's ticks never overlap on a
-- replica and this is the tick's only claim, so that tick has ended: it died before the call,
-- or called out and could not mark (its work connection was killed). Either way the row is
-- re-delivered now with the same id as the idempotency key, not minutes later. Also any row
-- left 'sending' by another lease for longer than stale_after seconds (a loop since disabled:
-- nobody else would ever take it back). Then pending rows. Two index-friendly picks (partial
-- indexes on 'sending' and 'pending') instead of one OR, which would scan every sent row of
-- the table each minute.
WITH stale AS (
    SELECT id FROM leasectl_certs.notification_events
    WHERE status = 'sending'
      AND ((claimed_lease = %(lease_name)s AND claimed_epoch <= %(lease_epoch)s)
           OR claimed_at < now() - make_interval(secs => %(stale_after)s))
    ORDER BY claimed_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), fresh AS (
    SELECT id FROM leasectl_certs.notification_events
    WHERE status = 'pending'
    ORDER BY created_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE leasectl_certs.notification_events n
    SET status = 'sending', claimed_epoch = %(lease_epoch)s, claimed_by = %(replica)s,
        claimed_lease = %(lease_name)s, claimed_at = now()
    FROM (SELECT id FROM stale UNION ALL SELECT id FROM fresh) c
    WHERE n.id = c.id
    RETURNING n.*
)
SELECT c.id, c.type, c.channel, c.recipient, c.subject, c.message, c.payload,
       c.certificate_id, c.threshold_days, c.retry_count, c.next_retry_at, c.created_at,
       mc.name AS cert_name, mc.common_name AS cert_common_name, mc.expires_at AS cert_expires_at
FROM claimed c
LEFT JOIN leasectl_certs.managed_certificates mc ON mc.id = c.certificate_id
ORDER BY c.created_at, c.id

-- name: claim_due_retries
-- notification_retry's claim: the rows this lease left 'sending' (an earlier tick or an older
-- epoch) and other leases' rows 'sending' longer than stale_after (same rule as
-- claim_pending), then failed rows whose next_retry_at has come.
WITH stale AS (
    SELECT id FROM leasectl_certs.notification_events
    WHERE status = 'sending'
      AND ((claimed_lease = %(lease_name)s AND claimed_epoch <= %(lease_epoch)s)
           OR claimed_at < now() - make_interval(secs => %(stale_after)s))
    ORDER BY claimed_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM leasectl_certs.notification_events
    WHERE status = 'failed' AND next_retry_at <= now() AND retry_count < %(max_attempts)s
    ORDER BY next_retry_at, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE leasectl_certs.notification_events n
    SET status = 'sending', claimed_epoch = %(lease_epoch)s, claimed_by = %(replica)s,
        claimed_lease = %(lease_name)s, claimed_at = now()
    FROM (SELECT id FROM stale UNION ALL SELECT id FROM due) c
    WHERE n.id = c.id
    RETURNING n.*
)
SELECT c.id, c.type, c.channel, c.recipient, c.subject, c.message, c.payload,
       c.certificate_id, c.threshold_days, c.retry_count, c.next_retry_at, c.created_at,
       mc.name AS cert_name, mc.common_name AS cert_common_name, mc.expires_at AS cert_expires_at
FROM claimed c
LEFT JOIN leasectl_certs.managed_certificates mc ON mc.id = c.certificate_id
ORDER BY c.next_retry_at NULLS FIRST, c.id

-- name: mark_sent
-- After a 2xx / accepted SMTP transaction, under lease.guard(). Only our own claim counts:
-- if a newer epoch re-claimed the row this updates nothing.
UPDATE leasectl_certs.notification_events
SET status = 'sent', sent_at = now(), attempted_at = now(), next_retry_at = NULL,
    last_error = NULL
WHERE id = %(id)s AND status = 'sending'
  AND claimed_lease = %(lease_name)s AND claimed_epoch = %(lease_epoch)s
RETURNING id

-- name: mark_failed
-- A failed attempt, under lease.guard(): retry_count counts failed attempts; the caller
-- decides dead (attempts exhausted, or a permanent error) and the wait before the next try.
UPDATE leasectl_certs.notification_events
SET status = CASE WHEN %(dead)s THEN 'dead' ELSE 'failed' END,
    retry_count = retry_count + 1,
    next_retry_at = CASE WHEN %(dead)s THEN NULL
                         ELSE now() + make_interval(secs => %(wait_s)s) END,
    last_error = %(error)s,
    attempted_at = now()
WHERE id = %(id)s AND status = 'sending'
  AND claimed_lease = %(lease_name)s AND claimed_epoch = %(lease_epoch)s
RETURNING retry_count, status, next_retry_at

-- name: release_claims
-- Give back claimed rows a cancelled tick did not attempt, so the other notification loop and
-- the next holder see them as they were: a row with a retry time goes back to 'failed', any
-- other to 'pending'. A hand-back that fails (the work connection is gone) loses nothing: the
-- row stays 'sending' and this lease's next tick takes it.
UPDATE leasectl_certs.notification_events
SET status = CASE WHEN next_retry_at IS NULL THEN 'pending' ELSE 'failed' END,
    claimed_epoch = NULL, claimed_by = NULL, claimed_lease = NULL, claimed_at = NULL
WHERE id = ANY(%(ids)s) AND status = 'sending'
  AND claimed_lease = %(lease_name)s AND claimed_epoch = %(lease_epoch)s

-- name: requeue
-- An operator's requeue of dead (or failed) rows: back to 'pending' with a fresh attempt
-- budget and no stale claim, so notification_send picks it up on its next tick under its
-- own epoch. Not fenced: it is not a lease holder's write, and a row being delivered right
-- now ('sending') is left alone.
UPDATE leasectl_certs.notification_events
SET status = 'pending', retry_count = 0, next_retry_at = NULL, last_error = NULL,
    claimed_epoch = NULL, claimed_by = NULL, claimed_lease = NULL, claimed_at = NULL
WHERE id = ANY(%(ids)s) AND status IN ('dead', 'failed')
RETURNING id
