-- leases.standby: pooled (docs/operator/running-a-cluster.md, "Hundreds of replicas"): a replica
-- that holds no lease and is not next in line for one keeps no lock session. It stamps its row
-- through the work DSN (which may be a transaction-mode pooler) with standby = true and no
-- backend_pid, and counts as live for placement while that stamp is fresh.
ALTER TABLE leasectl_replicas
    ADD COLUMN standby boolean NOT NULL DEFAULT false,
    -- when what placement ranks a replica by last changed: a standby's poll fingerprints the
    -- live view by (count, ids, latest placement_at) instead of re-reading every row's arrays
    ADD COLUMN placement_at timestamptz NOT NULL DEFAULT now(),
    -- `leasectl step-down --replica <id>`: besides its NOTIFY (heard by lock sessions only),
    -- the request is kept here for a standby, whose next poll reads it (cooldown NULL: the
    -- replica's own leases.step_down_cooldown)
    ADD COLUMN drain_requested_at timestamptz,
    ADD COLUMN drain_cooldown double precision;

CREATE FUNCTION leasectl_replicas_placement_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.campaigns_for, NEW.preferred_for, NEW.wedged, NEW.labels)
       IS DISTINCT FROM (OLD.campaigns_for, OLD.preferred_for, OLD.wedged, OLD.labels) THEN
        NEW.placement_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER leasectl_replicas_placement_at BEFORE UPDATE ON leasectl_replicas
FOR EACH ROW EXECUTE FUNCTION leasectl_replicas_placement_at();

-- The live replicas placement ranks, as every replica must compute them alike (the lock
-- session's heartbeat and a standby's poll both read this one definition): not stopped, allowed
-- to lead, seen within live_s, and either a standby or with its lock session still connected
-- (its stamped backend exists under the replica's application_name), so a crashed direct
-- replica drops out as soon as the server has ended its session; `me` is always live to itself.
CREATE FUNCTION leasectl_live_replicas(me text, live_s double precision)
RETURNS TABLE (id text, campaigns_for text[], preferred_for text[], wedged text[],
               live_for double precision, labels text[], placement_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.campaigns_for, r.preferred_for, r.wedged,
           extract(epoch FROM now() - coalesce(r.connected_at, r.started_at))::float8,
           r.labels, r.placement_at
    FROM leasectl_replicas r
    WHERE r.stopped_at IS NULL AND r.may_lead
      AND r.last_seen > now() - make_interval(secs => live_s)
      AND (r.id = me OR r.standby OR EXISTS (
          SELECT 1 FROM pg_stat_activity a
          WHERE a.pid = r.backend_pid AND a.datname = current_database()
            AND a.application_name = left('leasectl/' || r.id, 63)))
$$;

-- A standby's one statement per poll (leasectl/standby.py). A function, not a query sent each
-- time: through a transaction-mode pooler nothing can be prepared, and planning this statement
-- cost more than running it; PL/pgSQL caches its plans per server connection, which a pooler
-- keeps open. It stamps the replica's row as a live standby (no lock session: no backend_pid),
-- refused like register_replica when the id is live in another process; then reads what the
-- standby decides by: the live replicas placement ranks, sent only when they changed since the
-- fingerprint the caller saw last (which live ids, and the latest placement_at: live_for, which
-- only holders use, is left out), and
-- per lease the replica its row names and whether that holder's lock session still holds it. connected_at
-- restarts when the row stops being a standby of this process, so rebalance_after counts from
-- the moment the replica is reachable in its current role.
CREATE FUNCTION leasectl_standby_poll(
    p_id text, p_host text, p_pid integer, p_version text, p_may_lead boolean,
    p_loops text[], p_labels text[], p_campaigns_for text[], p_preferred_for text[],
    p_names text[], p_live_s double precision, p_seen text, p_want boolean)
RETURNS TABLE (registered boolean, view_hash text, replicas json, leases json,
               drain_age_s double precision, drain_cooldown double precision)
LANGUAGE plpgsql AS $$
DECLARE
    got text;
    crashed text[];
BEGIN
    INSERT INTO leasectl_replicas AS r
           (id, host, pid, version, may_lead, loops, started_at, last_seen, backend_pid,
            labels, campaigns_for, preferred_for, connected_at, standby)
    VALUES (p_id, p_host, p_pid, p_version, p_may_lead, p_loops, now(), now(), NULL,
            p_labels, p_campaigns_for, p_preferred_for, now(), true)
    ON CONFLICT (id) DO UPDATE
    SET last_seen = now(), backend_pid = NULL, stopped_at = NULL,
        host = excluded.host, pid = excluded.pid, version = excluded.version,
        may_lead = excluded.may_lead, loops = excluded.loops, labels = excluded.labels,
        campaigns_for = excluded.campaigns_for, preferred_for = excluded.preferred_for,
        connected_at = CASE WHEN r.standby AND r.stopped_at IS NULL
                                 AND (r.host, r.pid) IS NOT DISTINCT FROM (excluded.host, excluded.pid)
                            THEN r.connected_at ELSE now() END,
        standby = true,
        started_at = CASE WHEN (r.host, r.pid) IS DISTINCT FROM (excluded.host, excluded.pid)
                          THEN now() ELSE r.started_at END,
        drain_requested_at = CASE WHEN (r.host, r.pid) IS DISTINCT FROM (excluded.host, excluded.pid)
                                  THEN NULL ELSE r.drain_requested_at END
    WHERE (r.host, r.pid) IS NOT DISTINCT FROM (excluded.host, excluded.pid)
       OR r.stopped_at IS NOT NULL
       OR r.last_seen < now() - make_interval(secs => p_live_s)
       OR NOT r.standby AND NOT EXISTS (
           SELECT 1 FROM pg_stat_activity a
           WHERE a.pid = r.backend_pid
             AND a.application_name = left('leasectl/' || r.id, 63))
    RETURNING r.id, extract(epoch FROM now() - r.drain_requested_at)::float8, r.drain_cooldown
    INTO got, drain_age_s, drain_cooldown;
    registered := got IS NOT NULL;
    -- who is live (count and ids) and the latest change of what placement ranks them by
    SELECT concat_ws(':', count(*), sum(hashtext(v.id)::bigint), max(v.placement_at))
    INTO view_hash
    FROM leasectl_live_replicas(p_id, p_live_s) v;
    IF p_want AND view_hash IS DISTINCT FROM p_seen THEN
        SELECT coalesce(json_agg(json_build_array(v.id, v.campaigns_for, v.preferred_for,
                                                  v.wedged, v.live_for, v.labels)), '[]'::json)
        INTO replicas
        FROM leasectl_live_replicas(p_id, p_live_s) v;
    END IF;
    -- Held: the row names a lock session that has not released the lease and still exists.
    -- Not pg_locks: reading it takes every lock-manager partition lock, and hundreds of polls
    -- a second would stall the try-locks of the very heirs this decides about. Between a new
    -- holder's try-lock and its epoch bump the lease may read as free for a moment: that only
    -- makes a standby look again (or connect) sooner; nobody is let in by it.
    WITH w AS (
        SELECT w.name, l.holder,
               l.released_at IS NULL AND EXISTS (
                   SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.holder_backend_pid)
                   AS locked,
               l.released_at IS NULL AND l.renewed_at > now() - make_interval(secs => p_live_s)
                   AS renewed
        FROM unnest(p_names) AS w(name)
        LEFT JOIN leasectl_leases l ON l.name = w.name)
    SELECT coalesce(json_agg(json_build_array(w.name, w.holder, w.locked)), '[]'::json),
           array_agg(DISTINCT w.holder) FILTER (WHERE w.renewed AND NOT w.locked)
    INTO leases, crashed
    FROM w;
    -- A holder that renewed within live_s, never released, and whose lock session is gone
    -- crashed. Say so on the control channel every lock session listens to (the heirs'
    -- among them, as a watcher says it in direct mode): with hundreds of standbys polling,
    -- one sees a crash within milliseconds, long before the heir's own next campaign. It
    -- stops once the lease is taken (the row names the new holder) or after live_s.
    PERFORM pg_notify('leasectl_control',
                      json_build_object('action', 'replica_gone', 'replica', c,
                                        'why', 'crash seen by a standby')::text)
    FROM unnest(crashed) AS c;
    RETURN NEXT;
END
$$;
