-- name: leased_ticks
-- The tick ledger of the given leased loops since the drill started (unix seconds; the
-- server's clock): one row per slot with its last attempt's outcome.
SELECT loop,
       extract(epoch FROM tick_at)::float8 AS tick_at,
       outcome,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM finished_at)::float8 AS finished_at,
       replica,
       epoch
FROM leasectl_ticks
WHERE loop = ANY(%(loops)s) AND tick_at >= to_timestamp(%(since)s)
ORDER BY loop, tick_at
