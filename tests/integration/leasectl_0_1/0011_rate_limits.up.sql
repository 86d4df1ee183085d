-- Cluster-wide rate limits (GCRA): one row per bucket, holding its theoretical arrival time.
-- A row whose tat is in the past is a full bucket, the same as no row: the GC loop deletes it.
CREATE TABLE leasectl_rate_limits (
    key        text PRIMARY KEY,
    tat        timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
