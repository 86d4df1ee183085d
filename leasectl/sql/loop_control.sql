-- name: poll
-- What a replica reads at each control poll (and at once on a loop_control NOTIFY), in one
-- statement: the pauses in force, and the triggers it may have to run: a leased loop's until
-- one replica claims it, an everywhere loop's newer than %(after)s (the last id this replica
-- knew when it started, or ran since). kind: 'pause' | 'trigger' | 'max'.
SELECT 'pause' AS kind, NULL::bigint AS id, p.loop, p.paused_at AS at, p.paused_by AS who,
       p.reason, p.stop_now, p.resume_at,
       extract(epoch FROM p.resume_at - now())::float8 AS resume_in_s
FROM leasectl_loop_pauses p
WHERE p.resume_at IS NULL OR p.resume_at > now()
UNION ALL
SELECT 'trigger', t.id, t.loop, t.requested_at, t.requested_by, t.reason, false, NULL, NULL
FROM leasectl_loop_triggers t
WHERE (t.claimed_at IS NULL AND t.loop = ANY(%(leased)s::text[]))
   OR (t.id > %(after)s AND t.loop = ANY(%(everywhere)s::text[]))
UNION ALL
SELECT 'max', (SELECT coalesce(max(id), 0) FROM leasectl_loop_triggers), '', NULL, '', '',
       false, NULL, NULL

-- name: pauses
-- Every pause row, ended ones too (status shows a pause that ends by itself and when).
SELECT loop, paused_at, paused_by, reason, stop_now, resume_at,
       extract(epoch FROM now() - paused_at)::float8 AS age_s,
       resume_at IS NOT NULL AND resume_at <= now() AS ended
FROM leasectl_loop_pauses
ORDER BY loop

-- name: pause
-- Pause a loop ('*': every loop). Pausing again replaces the reason and who (the latest word).
INSERT INTO leasectl_loop_pauses AS p (loop, paused_by, reason, stop_now)
VALUES (%(loop)s, %(by)s, %(reason)s, %(now)s)
ON CONFLICT (loop) DO UPDATE
SET paused_by = excluded.paused_by, reason = excluded.reason, stop_now = excluded.stop_now,
    paused_at = CASE WHEN p.resume_at IS NOT NULL AND p.resume_at <= now() THEN now()
                     ELSE p.paused_at END,
    resume_at = NULL

-- name: resume_now
-- End a pause now; returns the row that was removed (none: it was not paused).
DELETE FROM leasectl_loop_pauses WHERE loop = %(loop)s
RETURNING paused_at, paused_by, reason, extract(epoch FROM now() - paused_at)::float8 AS age_s

-- name: resume_at
-- End a pause at a given time (the row stays until then; status shows when).
UPDATE leasectl_loop_pauses SET resume_at = %(at)s WHERE loop = %(loop)s
RETURNING paused_at, paused_by, reason, extract(epoch FROM now() - paused_at)::float8 AS age_s

-- name: trigger
-- Ask for one extra tick of a loop.
INSERT INTO leasectl_loop_triggers (loop, requested_by, reason)
VALUES (%(loop)s, %(by)s, %(reason)s)
RETURNING id

-- name: known_loops
-- The loops the cluster knows: every registered replica's loops (stopped ones too: a cluster
-- that is down still has loops), the leases ever taken and the loops that have a pause.
SELECT name FROM (
    SELECT unnest(loops) AS name FROM leasectl_replicas
    UNION SELECT name FROM leasectl_leases WHERE left(name, 9) <> 'leasectl:'
    UNION SELECT loop FROM leasectl_loop_pauses WHERE loop <> '*'
) s ORDER BY name

-- name: record_event
-- The audit trail of operator actions on loops (who, when, why), next to the lease events.
INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason)
VALUES (%(loop)s, NULL, %(by)s, %(event)s, %(reason)s)

-- name: notify
-- Tell every lock session to poll now (a replica that misses it reads the rows at its next poll).
SELECT pg_notify('leasectl_control', %(payload)s)
