-- The scheduler's misfire record and run history (cron, max_delay, run history in status).

-- A slot that could only start later than its loop's max_delay (or beyond misfire="all"'s
-- catch_up) is recorded 'missed' under the fence instead of run: it counts as handled, so a
-- restart or failover does not run it after all.
ALTER TABLE leasectl_ticks DROP CONSTRAINT leasectl_ticks_outcome_check;
ALTER TABLE leasectl_ticks ADD CONSTRAINT leasectl_ticks_outcome_check
    CHECK (outcome IN ('running', 'ok', 'failed', 'lost', 'cancelled', 'missed'));
CREATE INDEX leasectl_ticks_loop_handled ON leasectl_ticks (loop, tick_at DESC)
    WHERE outcome IN ('ok', 'missed');
-- Ledger retention (scheduler.ledger_retention) deletes by age.
CREATE INDEX leasectl_ticks_finished ON leasectl_ticks (finished_at);

-- The last run of every loop on every replica (leased and everywhere), upserted after each
-- tick, with the next fire time: what `leasectl status` shows per loop. The ledger above
-- keeps the leased loops' history; everywhere loops have only this row per replica.
CREATE TABLE leasectl_loop_runs (
    loop         text NOT NULL,
    replica      text NOT NULL,
    placement    text NOT NULL,
    schedule     text NOT NULL,
    tz           text NOT NULL,
    tick_at      timestamptz,           -- the slot or fire time the run was for
    started_at   timestamptz,
    finished_at  timestamptz,
    seconds      double precision,
    outcome      text,
    error        text,                  -- this run's error (NULL when ok)
    last_error   text,                  -- the latest error seen, kept across later ok runs
    last_error_at timestamptz,
    next_fire_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (loop, replica)
);
