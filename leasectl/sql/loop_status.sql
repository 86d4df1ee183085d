-- name: last_runs
-- Each loop's latest ledger row (a leased loop's slot or triggered tick), through the ledger's
-- (loop, tick_at) index: one row per loop however long the ledger is. Everywhere loops keep no
-- ledger and come back empty. (Issue 18's run history adds columns here: this is the seam.)
SELECT n.name, t.tick_at, t.replica, t.epoch, t.outcome,
       extract(epoch FROM coalesce(t.finished_at, now()) - t.started_at)::float8 AS seconds,
       t.error, t.trigger_id IS NOT NULL AS triggered, t.started_at
FROM unnest(%(names)s::text[]) AS n(name)
LEFT JOIN LATERAL (
    SELECT * FROM leasectl_ticks k WHERE k.loop = n.name ORDER BY k.tick_at DESC LIMIT 1
) t ON true
ORDER BY n.name

-- name: recent_events
-- The newest lease and operator events, newest first (the status page's timeline).
SELECT at, lease, epoch, replica, event, coalesce(reason, ''),
       extract(epoch FROM now() - at)::float8 AS age_s
FROM leasectl_lease_events
ORDER BY id DESC
LIMIT %(limit)s
