-- The tick ledger of leased loops: one row per scheduled slot. A tick inserts its row with the
-- fence check first, so a slot runs at most once even in a split brain, and a restarted or
-- failed-over replica knows when the loop last ran.
CREATE TABLE leasectl_ticks (
    loop        text NOT NULL,
    tick_at     timestamptz NOT NULL,
    epoch       bigint NOT NULL,
    replica     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'ok', 'failed', 'lost', 'cancelled')),
    attempts    integer NOT NULL DEFAULT 1,
    error       text,
    UNIQUE (loop, tick_at)
);
CREATE INDEX leasectl_ticks_loop_done ON leasectl_ticks (loop, tick_at DESC) WHERE outcome = 'ok';
