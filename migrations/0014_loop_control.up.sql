-- Operator control of loops at runtime (`leasectl loop pause | resume | trigger`, App.pause ...).
-- Rows, not messages: a pause holds across restarts and for replicas that start later; the
-- NOTIFY on the control channel only makes every replica read these rows at once.

-- One row per paused loop; loop '*' pauses every loop (`pause --all`, a freeze). A paused
-- leased loop keeps its lease but starts no tick. resume_at: the pause ends by itself then.
CREATE TABLE leasectl_loop_pauses (
    loop       text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL,
    reason     text NOT NULL DEFAULT '',
    stop_now   boolean NOT NULL DEFAULT false,  -- --now: a running tick is told to stop
    resume_at  timestamptz
);

-- One row per `loop trigger`: one extra tick as soon as possible. A leased loop's trigger is
-- claimed once, under the fence, by the replica that runs it (claimed_*): at most once across
-- the cluster even while the lease moves. An everywhere loop's trigger runs once on every
-- replica that was running when it was asked for (none claims it).
CREATE TABLE leasectl_loop_triggers (
    id            bigserial PRIMARY KEY,
    loop          text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requested_by  text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    claimed_by    text,
    claimed_epoch bigint,
    claimed_at    timestamptz
);
CREATE INDEX leasectl_loop_triggers_pending ON leasectl_loop_triggers (loop, id)
    WHERE claimed_at IS NULL;

-- A triggered run of a leased loop is a row of the tick ledger too (tick_at: when it was asked
-- for), marked with its trigger; the slot arithmetic ignores such rows.
ALTER TABLE leasectl_ticks ADD COLUMN trigger_id bigint;
