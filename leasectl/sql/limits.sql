-- name: acquire
-- One GCRA step on the database clock, in one statement: every replica shares the bucket.
-- The bucket's theoretical arrival time (tat) moves by one emission interval (%(t)s seconds)
-- per allowed event; an event is allowed while tat stays within %(cap)s seconds of now
-- (cap = burst x interval). ON CONFLICT re-checks the WHERE on the latest row version, so
-- concurrent acquirers never overshoot. When refused, wait_s says when the next one fits.
WITH now AS (SELECT clock_timestamp() AS t),
up AS (
    INSERT INTO leasectl_rate_limits AS r (key, tat, updated_at)
    SELECT %(key)s, now.t + make_interval(secs => %(t)s), now.t FROM now
    ON CONFLICT (key) DO UPDATE
       SET tat = greatest(r.tat, excluded.updated_at) + make_interval(secs => %(t)s),
           updated_at = excluded.updated_at
     WHERE greatest(r.tat, excluded.updated_at) + make_interval(secs => %(t)s)
           <= excluded.updated_at + make_interval(secs => %(cap)s)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM up) AS allowed,
       (SELECT greatest(0, extract(epoch FROM r.tat - now.t) + %(t)s - %(cap)s)::float8
          FROM leasectl_rate_limits r, now WHERE r.key = %(key)s) AS wait_s

-- name: gc
-- Buckets whose tat has passed are full again: a missing row means the same, so drop them.
DELETE FROM leasectl_rate_limits WHERE tat < clock_timestamp() - make_interval(secs => %(idle_s)s)

-- name: fill
-- How full each bucket is now (0 = idle, 1 = throttling), for `leasectl status`.
SELECT key, greatest(0, extract(epoch FROM tat - clock_timestamp()))::float8 AS backlog_s,
       updated_at
FROM leasectl_rate_limits
ORDER BY key
