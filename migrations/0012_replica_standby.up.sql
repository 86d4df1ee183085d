-- leases.standby: pooled (docs/operator/running-a-cluster.md, "Hundreds of replicas"): a replica
-- that holds no lease and is not next in line for one keeps no lock session. It stamps its row
-- through the work DSN (which may be a transaction-mode pooler) with standby = true and no
-- backend_pid, and counts as live for placement while that stamp is fresh.
ALTER TABLE leasectl_replicas ADD COLUMN standby boolean NOT NULL DEFAULT false;

-- The live replicas placement ranks, as every replica must compute them alike (the lock
-- session's heartbeat and a standby's poll both read this one definition): not stopped, allowed
-- to lead, seen within live_s, and either a standby or with its lock session still connected
-- (its stamped backend exists under the replica's application_name), so a crashed direct
-- replica drops out as soon as the server has ended its session; `me` is always live to itself.
CREATE FUNCTION leasectl_live_replicas(me text, live_s double precision)
RETURNS TABLE (id text, campaigns_for text[], preferred_for text[], wedged text[],
               live_for double precision, labels text[])
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.campaigns_for, r.preferred_for, r.wedged,
           extract(epoch FROM now() - coalesce(r.connected_at, r.started_at))::float8,
           r.labels
    FROM leasectl_replicas r
    WHERE r.stopped_at IS NULL AND r.may_lead
      AND r.last_seen > now() - make_interval(secs => live_s)
      AND (r.id = me OR r.standby OR EXISTS (
          SELECT 1 FROM pg_stat_activity a
          WHERE a.pid = r.backend_pid AND a.datname = current_database()
            AND a.application_name = left('leasectl/' || r.id, 63)))
$$;
