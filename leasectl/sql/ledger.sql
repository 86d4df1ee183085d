-- name: prune_ticks
-- Ledger retention: delete finished rows older than the retention, at most %(batch)s at a time,
-- but never a loop's latest handled slot (ok or missed): it is what tells a restarted or new
-- holder which slots are done (a monthly loop's only row may be older than the retention).
DELETE FROM leasectl_ticks
WHERE ctid IN (
    SELECT t.ctid FROM leasectl_ticks t
    WHERE t.finished_at < now() - make_interval(secs => %(keep_s)s)
      AND t.tick_at < (
          SELECT max(k.tick_at) FROM leasectl_ticks k
          WHERE k.loop = t.loop AND k.outcome IN ('ok', 'missed')
      )
    LIMIT %(batch)s
)

-- name: prune_runs
-- Last-run rows of replicas (or loops) not heard of for longer than the retention.
DELETE FROM leasectl_loop_runs WHERE updated_at < now() - make_interval(secs => %(keep_s)s)
