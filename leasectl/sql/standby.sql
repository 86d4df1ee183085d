-- Statements of a standby replica (leases.standby: pooled), run by leasectl.standby on its one
-- connection through the work DSN. That DSN may be a transaction-mode pooler (PgBouncer, RDS
-- Proxy, Supavisor), so each statement is self-contained: no session state, nothing prepared.

-- name: poll
-- One round trip per poll: stamp this replica's row as a live standby (no lock session, so no
-- backend_pid), and read what it needs to decide whether to open one: the live replicas
-- placement ranks (leasectl_live_replicas, the heartbeat's own definition) and, per lease it
-- campaigns for, the replica the lease row names and whether any session holds its lock now.
-- An id live in another process is refused as register_replica refuses it (no row in `me`).
-- connected_at restarts when the row stops being a standby of this process, so placement's
-- rebalance_after counts from the moment it is reachable in its current role.
WITH me AS (
    INSERT INTO leasectl_replicas AS r
           (id, host, pid, version, may_lead, loops, started_at, last_seen, backend_pid,
            labels, campaigns_for, preferred_for, connected_at, standby)
    VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(may_lead)s, %(loops)s, now(), now(), NULL,
            %(labels)s, %(campaigns_for)s, %(preferred_for)s, now(), true)
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
                          THEN now() ELSE r.started_at END
    WHERE (r.host, r.pid) IS NOT DISTINCT FROM (excluded.host, excluded.pid)
       OR r.stopped_at IS NOT NULL
       OR r.last_seen < now() - make_interval(secs => %(live_s)s)
       OR NOT r.standby AND NOT EXISTS (
           SELECT 1 FROM pg_stat_activity a
           WHERE a.pid = r.backend_pid
             AND a.application_name = left('leasectl/' || r.id, 63))
    RETURNING r.id
), state AS (
    SELECT w.name, l.holder, h.pid IS NOT NULL AS locked
    FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
    LEFT JOIN leasectl_leases l ON l.name = w.name
    LEFT JOIN pg_locks h
           ON h.locktype = 'advisory' AND h.granted AND h.objsubid = 2
          AND h.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND h.classid = (%(ns)s::bigint & 4294967295)::oid
          AND h.objid = (w.key::bigint & 4294967295)::oid
)
SELECT (SELECT count(*) FROM me) > 0,
       (SELECT coalesce(json_agg(json_build_array(
                   id, campaigns_for, preferred_for, wedged, live_for, labels)), '[]'::json)
        FROM leasectl_live_replicas(%(id)s, %(live_s)s)),
       (SELECT coalesce(json_agg(json_build_array(name, holder, locked)), '[]'::json)
        FROM state)

-- name: replica_row
-- Who holds a replica id (the error message when a live replica already uses it).
SELECT host, pid, extract(epoch FROM now() - last_seen)::float8 AS last_seen_age_s
FROM leasectl_replicas WHERE id = %(id)s

-- name: stopped
-- A standby's graceful stop: it holds nothing, so there is nothing to hand over.
UPDATE leasectl_replicas SET stopped_at = now(), last_seen = now() WHERE id = %(id)s AND standby
