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

-- name: last_done
-- The latest slot this loop completed, whoever ran it: how a restart or failover knows
-- when the loop last ran.
-- A triggered extra tick (leasectl loop trigger; trigger_id set) is no slot.
SELECT max(tick_at) FROM leasectl_ticks
WHERE loop = %(loop)s AND outcome = 'ok' AND trigger_id IS NULL

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
