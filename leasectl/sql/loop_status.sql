-- name: recent_events
-- The newest lease and operator events, newest first (the status page's timeline).
SELECT at, lease, epoch, replica, event, coalesce(reason, ''),
       extract(epoch FROM now() - at)::float8 AS age_s
FROM leasectl_lease_events
ORDER BY id DESC
LIMIT %(limit)s
