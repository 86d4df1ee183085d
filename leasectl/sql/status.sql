-- name: migrated
-- Whether the lease tables exist (status on an unmigrated database exits 2, saying so).
SELECT to_regclass('leasectl_leases') IS NOT NULL AND to_regclass('leasectl_replicas') IS NOT NULL

-- name: leases
-- Every lease expected by the configuration or ever acquired, with the truth from pg_locks:
-- which backend holds the advisory lock (in this database: advisory locks are per database),
-- that backend's session (application_name 'leasectl/<replica-id>') and the bookkeeping row.
WITH wanted AS (
    SELECT DISTINCT ON (name) name, key FROM (
        SELECT w.name, w.key FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
        UNION ALL
        SELECT l.name, l.key FROM leasectl_leases l WHERE left(l.name, 9) <> 'leasectl:'
    ) s ORDER BY name
), locks AS (
    SELECT k.objid::bigint AS key_oid, k.pid
    FROM pg_locks k
    WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
      AND k.classid = (%(ns)s::bigint & 4294967295)::oid
      AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT w.name,
       k.pid AS lock_pid,
       a.application_name,
       host(a.client_addr) AS client_addr,
       r.holder,
       r.epoch,
       r.holder_backend_pid,
       extract(epoch FROM now() - r.acquired_at)::float8 AS held_for_s,
       extract(epoch FROM now() - greatest(
           r.renewed_at, CASE WHEN rep.backend_pid = k.pid THEN rep.last_seen END
       ))::float8 AS renewed_age_s,
       extract(epoch FROM now() - greatest(r.released_at, r.renewed_at))::float8 AS idle_s
FROM wanted w
LEFT JOIN locks k ON k.key_oid = (w.key::bigint & 4294967295)
LEFT JOIN pg_stat_activity a ON a.pid = k.pid
LEFT JOIN leasectl_leases r ON r.name = w.name
-- a lease is renewed by every heartbeat of its holder's lock session (see leases.sql)
LEFT JOIN leasectl_replicas rep ON rep.id = r.holder
ORDER BY w.name

-- name: replicas
-- Registered replicas that are connected or were seen recently (crashed replicas with random
-- ids would otherwise pile up forever; --all-replicas shows them). A replica is connected while
-- its lock session exists (application_name is truncated to 63 bytes by the server); a standby
-- (leases.standby: pooled) has none and is alive while its polls keep last_seen fresh.
SELECT r.id, r.host, r.pid, r.version, r.started_at,
       extract(epoch FROM now() - r.last_seen)::float8 AS last_seen_age_s,
       r.may_lead, r.loops, r.stopped_at IS NOT NULL AS stopped,
       s.pid AS lock_pid,
       -- placement (migration 0010): what peers rank this replica by
       r.labels, r.campaigns_for, r.preferred_for, r.wedged,
       extract(epoch FROM now() - coalesce(r.connected_at, r.started_at))::float8 AS live_for_s,
       -- leases.standby: pooled (migration 0012): no lock session, polling through the pooler
       r.standby
FROM leasectl_replicas r
LEFT JOIN LATERAL (
    SELECT a.pid FROM pg_stat_activity a
    WHERE a.application_name = left('leasectl/' || r.id, 63) AND a.datname = current_database()
    ORDER BY a.backend_start DESC
    LIMIT 1
) s ON true
WHERE %(all)s OR s.pid IS NOT NULL
   OR r.last_seen > now() - make_interval(secs => %(recent_s)s)
ORDER BY r.id

-- name: evict
-- Terminate the holder's lock session, but only if that backend still holds the lock: the
-- server then frees its session locks and a waiting replica takes over.
SELECT pg_terminate_backend(k.pid)
FROM pg_locks k
WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
  AND k.classid = (%(ns)s::bigint & 4294967295)::oid
  AND k.objid = (%(key)s::bigint & 4294967295)::oid
  AND k.pid = %(pid)s
  AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())

-- name: record_event
-- The audit trail: who evicted or asked for a step-down from the command line.
INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason)
VALUES (%(lease)s, %(epoch)s, %(replica)s, %(event)s, %(reason)s)

-- name: step_downs
-- Step-down requests of the last hour that concern a lease (its own, or a whole replica's):
-- which replicas may still be staying away from it (`leasectl step-down` explains a lease
-- left free).
SELECT at, reason FROM leasectl_lease_events
WHERE event = 'step_down_requested' AND lease IN (%(lease)s, '*')
  AND at > now() - interval '1 hour'
ORDER BY id

-- name: loop_runs
-- Every loop's last run on every replica that recorded one (migration 0013), with whether
-- that replica is live and has the loop wedged. Replicas not seen for recent_s are left out
-- unless all is set; a leased loop keeps its rows (where it last ran matters after a crash).
SELECT r.loop, r.replica, r.placement, r.schedule, r.tz, r.tick_at, r.started_at,
       r.seconds, r.outcome, r.error, r.last_error, r.last_error_at, r.next_fire_at,
       coalesce(r.loop = ANY(rep.wedged), false) AS wedged,
       coalesce(rep.stopped_at IS NULL
                AND rep.last_seen > now() - make_interval(secs => %(recent_s)s), false) AS live
FROM leasectl_loop_runs r
LEFT JOIN leasectl_replicas rep ON rep.id = r.replica
WHERE (%(loop)s::text IS NULL OR r.loop = %(loop)s)
  AND (%(all)s OR r.placement = 'leased'
       OR rep.last_seen > now() - make_interval(secs => %(recent_s)s))
ORDER BY r.loop, r.started_at DESC NULLS LAST, r.replica

-- name: loop_ticks
-- A leased loop's newest slots from the tick ledger: its run history. A slot is claimed up
-- to 0.25 s before its fire time (started_at), and its body starts no earlier than tick_at.
SELECT tick_at, replica, epoch, started_at, finished_at,
       extract(epoch FROM finished_at - greatest(started_at, tick_at))::float8 AS seconds,
       outcome, attempts, error,
       trigger_id IS NOT NULL AS triggered  -- a `leasectl loop trigger` run (migration 0014)
FROM leasectl_ticks
WHERE loop = %(loop)s
ORDER BY tick_at DESC
LIMIT %(limit)s

-- name: declared_leases
-- What `leasectl status` expects without --app: the leases the live and recent replicas'
-- Apps declare (migration 0017), from the same replicas the `replicas` query lists.
SELECT DISTINCT d.name
FROM leasectl_replicas r, unnest(r.declared_leases) AS d(name)
WHERE r.last_seen > now() - make_interval(secs => %(recent_s)s)
   OR EXISTS (
       SELECT 1 FROM pg_stat_activity a
       WHERE a.application_name = left('leasectl/' || r.id, 63)
         AND a.datname = current_database())
ORDER BY 1

-- name: replica_sessions
-- Per database of the server, the replicas with a session on it: lock sessions
-- (leasectl/<id>) and work pools (leasectl-work/<id>, which a pooled standby has without a
-- lock session). `leasectl embedded stop` refuses while there are any.
SELECT datname, array_agg(DISTINCT regexp_replace(application_name, '^leasectl(-work)?/', ''))
FROM pg_stat_activity
WHERE application_name LIKE 'leasectl/%%' OR application_name LIKE 'leasectl-work/%%'
GROUP BY datname
ORDER BY datname
