-- name: claim_tick
-- Claim a leased loop's slot, fenced by the epoch (FOR KEY SHARE: serializes with the epoch bump,
-- not with heartbeats). A slot runs at most once: a second claim
-- for the same slot only succeeds if the earlier run did not finish (failed, lost, cancelled,
-- or still 'running' under an older epoch, i.e. its holder died mid-tick).
INSERT INTO leasectl_ticks AS t (loop, tick_at, epoch, replica, started_at, outcome, attempts)
SELECT %(loop)s, %(tick_at)s, %(lease_epoch)s, %(replica)s, now(), 'running', 1
WHERE (SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))
ON CONFLICT (loop, tick_at) DO UPDATE
SET epoch = excluded.epoch, replica = excluded.replica, started_at = now(),
    finished_at = NULL, outcome = 'running', attempts = t.attempts + 1, error = NULL
WHERE t.outcome IN ('failed', 'lost', 'cancelled')
   OR (t.outcome = 'running' AND t.epoch < excluded.epoch)
RETURNING attempts

-- name: finish_tick
-- Record the outcome, fenced: a superseded holder cannot mark a slot done.
UPDATE leasectl_ticks
SET finished_at = now(), outcome = %(outcome)s, error = %(error)s
WHERE loop = %(loop)s AND tick_at = %(tick_at)s AND epoch = %(lease_epoch)s
  AND (SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))

-- name: miss_tick
-- Record a slot as missed (later than max_delay, or beyond catch_up), fenced like a claim:
-- only a slot nobody completed, and only under the current epoch.
INSERT INTO leasectl_ticks AS t
    (loop, tick_at, epoch, replica, started_at, finished_at, outcome, attempts, error)
SELECT %(loop)s, %(tick_at)s, %(lease_epoch)s, %(replica)s, now(), now(), 'missed', 0, %(error)s
WHERE (SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))
ON CONFLICT (loop, tick_at) DO UPDATE
SET epoch = excluded.epoch, replica = excluded.replica, finished_at = now(),
    outcome = 'missed', error = excluded.error
WHERE t.outcome IN ('failed', 'lost', 'cancelled')
   OR (t.outcome = 'running' AND t.epoch < excluded.epoch)
RETURNING tick_at

-- name: last_done
-- The latest slot this loop handled (ran, or recorded missed), whoever did: how a restart
-- or failover knows which slots still need running.
-- A triggered extra tick (leasectl loop trigger; trigger_id set) is no slot.
SELECT max(tick_at) FROM leasectl_ticks
WHERE loop = %(loop)s AND outcome IN ('ok', 'missed') AND trigger_id IS NULL

-- name: record_run
-- The last run of a loop on this replica (status' loops table). Not fenced: each replica
-- reports only what it did itself. The latest error survives later ok runs.
INSERT INTO leasectl_loop_runs AS r
    (loop, replica, placement, schedule, tz, tick_at, started_at, finished_at, seconds,
     outcome, error, last_error, last_error_at, next_fire_at, updated_at)
VALUES (%(loop)s, %(replica)s, %(placement)s, %(schedule)s, %(tz)s, %(tick_at)s,
        %(started_at)s, %(finished_at)s, %(seconds)s, %(outcome)s, %(error)s, %(error)s,
        CASE WHEN %(error)s::text IS NULL THEN NULL ELSE %(finished_at)s END,
        %(next_fire_at)s, now())
ON CONFLICT (loop, replica) DO UPDATE
SET placement = excluded.placement, schedule = excluded.schedule, tz = excluded.tz,
    tick_at = excluded.tick_at, started_at = excluded.started_at,
    finished_at = excluded.finished_at, seconds = excluded.seconds,
    outcome = excluded.outcome, error = excluded.error,
    last_error = coalesce(excluded.last_error, r.last_error),
    last_error_at = coalesce(excluded.last_error_at, r.last_error_at),
    next_fire_at = excluded.next_fire_at, updated_at = now()

-- name: claim_trigger
-- The holder claims a leased loop's trigger under the fence and records its run in the tick
-- ledger (tick_at: when it was asked for), in one statement: a trigger runs at most once
-- across the cluster, and never under a superseded epoch. No row: claimed already, or fenced.
WITH t AS (
    UPDATE leasectl_loop_triggers
    SET claimed_by = %(replica)s, claimed_epoch = %(lease_epoch)s, claimed_at = now()
    WHERE id = %(trigger)s AND claimed_at IS NULL
      AND (SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))
    RETURNING id, loop, requested_at
)
INSERT INTO leasectl_ticks (loop, tick_at, epoch, replica, started_at, outcome, attempts, trigger_id)
SELECT t.loop, t.requested_at, %(lease_epoch)s, %(replica)s, now(), 'running', 1, t.id FROM t
ON CONFLICT (loop, tick_at) DO NOTHING
RETURNING tick_at
