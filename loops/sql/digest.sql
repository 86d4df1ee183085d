-- name: stats
-- The digest's stat cards, in one round trip.
SELECT
    count(*) FILTER (WHERE status <> 'Archived') AS total,
    count(*) FILTER (WHERE status NOT IN ('Archived', 'Revoked') AND expires_at > now()
                     AND expires_at < now() + make_interval(days => %(days)s)) AS expiring,
    count(*) FILTER (WHERE status = 'Expired'
                     OR (status NOT IN ('Archived', 'Revoked') AND expires_at <= now())) AS expired,
    count(*) FILTER (WHERE status = 'Revoked') AS revoked,
    (SELECT count(*) FROM leasectl_certs.agents WHERE retired_at IS NULL) AS agents_total,
    (SELECT count(*) FROM leasectl_certs.agents WHERE retired_at IS NULL AND status = 'Online') AS agents_online,
    (SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Pending') AS jobs_pending,
    (SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Failed') AS jobs_failed,
    (SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed') AS jobs_completed
FROM leasectl_certs.managed_certificates

-- name: by_status
SELECT status, count(*) AS n FROM leasectl_certs.managed_certificates GROUP BY status ORDER BY status

-- name: expiring
-- Every certificate expiring inside the window: no LIMIT (certctl's list clamp showed 50).
SELECT mc.id, mc.name, mc.common_name, mc.expires_at,
       COALESCE(o.name, mc.owner_id) AS owner,
       floor(extract(epoch FROM mc.expires_at - now()) / 86400)::int AS days_left
FROM leasectl_certs.managed_certificates mc
LEFT JOIN leasectl_certs.owners o ON o.id = mc.owner_id
WHERE mc.status NOT IN ('Archived', 'Revoked')
  AND mc.expires_at > now() AND mc.expires_at < now() + make_interval(days => %(days)s)
ORDER BY mc.expires_at, mc.id

-- name: owner_emails
-- Default recipients: every owner's email, once.
SELECT DISTINCT lower(trim(email)) AS email
FROM leasectl_certs.owners
WHERE email IS NOT NULL AND trim(email) <> ''
ORDER BY 1

-- name: claim
-- Claim (period, recipient) under lease.guard(). A 'sent' row is never re-claimed: that is
-- the once-per-period guarantee. A 'claimed' row (a holder died between send and mark) or a
-- 'failed' one is taken over by this epoch and sent again with the same Message-ID.
INSERT INTO leasectl_certs.digest_sends AS d (period_start, recipient, status, epoch, replica, cert_count,
                               expiring)
VALUES (%(period)s, %(recipient)s, 'claimed', %(lease_epoch)s, %(replica)s, %(cert_count)s,
        %(expiring)s)
ON CONFLICT (period_start, recipient) DO UPDATE
SET status = 'claimed', epoch = excluded.epoch, replica = excluded.replica,
    cert_count = excluded.cert_count, expiring = excluded.expiring, error = NULL
WHERE d.status <> 'sent'
RETURNING recipient

-- name: mark_sent
UPDATE leasectl_certs.digest_sends SET status = 'sent', sent_at = now(), error = NULL
WHERE period_start = %(period)s AND recipient = %(recipient)s
  AND status = 'claimed' AND epoch = %(lease_epoch)s

-- name: mark_failed
UPDATE leasectl_certs.digest_sends SET status = 'failed', error = %(error)s
WHERE period_start = %(period)s AND recipient = %(recipient)s
  AND status = 'claimed' AND epoch = %(lease_epoch)s
