-- Statements about the lease tables. The ones run on the lock connection are executed only
-- by leasectl.locks.LockSession (which translates their errors); `fence` and `current_epoch`
-- run in the caller's own transaction (Lease.guard).

-- name: register_replica
-- Announce this replica; `leasectl status` joins it with pg_locks to show who is alive. The
-- placement columns (migration 0010) are what peers rank it by; connected_at restarts with
-- every lock session, so a replica that keeps reconnecting never looks settled.
INSERT INTO leasectl_replicas
       (id, host, pid, version, may_lead, loops, started_at, last_seen, backend_pid,
        labels, campaigns_for, preferred_for, connected_at, standby, declared_leases)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(may_lead)s, %(loops)s, now(), now(),
        pg_backend_pid(), %(labels)s, %(campaigns_for)s, %(preferred_for)s, now(), false,
        %(declared_leases)s)
ON CONFLICT (id) DO UPDATE
SET host = excluded.host, pid = excluded.pid, version = excluded.version,
    may_lead = excluded.may_lead, loops = excluded.loops, last_seen = now(), stopped_at = NULL,
    declared_leases = excluded.declared_leases,
    backend_pid = excluded.backend_pid, labels = excluded.labels,
    campaigns_for = excluded.campaigns_for, preferred_for = excluded.preferred_for,
    connected_at = now(), standby = false,
    started_at = CASE WHEN (leasectl_replicas.host, leasectl_replicas.pid)
                           IS DISTINCT FROM (excluded.host, excluded.pid)
                      THEN now() ELSE leasectl_replicas.started_at END,
    -- a drain (step-down --replica) was asked of the process that had this id, not this one
    drain_requested_at = CASE WHEN (leasectl_replicas.host, leasectl_replicas.pid)
                                   IS DISTINCT FROM (excluded.host, excluded.pid)
                              THEN NULL ELSE leasectl_replicas.drain_requested_at END
-- An id already live in another process is refused (no row returned): its lock session still
-- exists (or it is a standby) and it heartbeated within live_s. The same process reconnecting,
-- a stopped or crashed predecessor (its session gone, or silent for live_s) may take the row
-- over.
WHERE (leasectl_replicas.host, leasectl_replicas.pid)
      IS NOT DISTINCT FROM (excluded.host, excluded.pid)
   OR leasectl_replicas.stopped_at IS NOT NULL
   OR leasectl_replicas.last_seen < now() - make_interval(secs => %(live_s)s)
   OR NOT leasectl_replicas.standby AND NOT EXISTS (
       SELECT 1 FROM pg_stat_activity a
       WHERE a.pid = leasectl_replicas.backend_pid AND a.pid <> pg_backend_pid()
         AND a.application_name = left('leasectl/' || leasectl_replicas.id, 63))
-- and a step-down --replica asked of this process while it had no lock session to hear it
RETURNING id, extract(epoch FROM now() - drain_requested_at)::float8, drain_cooldown

-- name: replica_row
-- Who holds a replica id (the error message when a live replica already uses it).
SELECT host, pid, extract(epoch FROM now() - last_seen)::float8 AS last_seen_age_s,
       backend_pid
FROM leasectl_replicas WHERE id = %(id)s

-- name: replica_candidacy
-- The leases this replica campaigns for changed (a step-down cooldown began or ended, a tick
-- wedged or returned): peers rank it by this row. Written on change only.
UPDATE leasectl_replicas SET campaigns_for = %(campaigns_for)s, preferred_for = %(preferred_for)s
WHERE id = %(id)s

-- name: replica_wedged
-- The loops whose ticks are wedged on this replica (empty when none); written on change only.
UPDATE leasectl_replicas SET wedged = %(loops)s WHERE id = %(id)s

-- name: replica_stopped
-- A graceful stop, sent before the replica hands its leases over. The control NOTIFY tells
-- the peers at once that it is leaving: they drop it from their placement view, so the next
-- candidate takes each released lease without waiting a placement step for this replica.
WITH stopped AS (
    UPDATE leasectl_replicas SET stopped_at = now(), last_seen = now() WHERE id = %(id)s
)
SELECT pg_notify('leasectl_control', %(payload)s)

-- name: contenders
-- The second half of a campaign, sent in the same pipeline (one round trip) right after
-- locks.sql's try_acquire (pg_try_advisory_lock), so pg_stat_activity shows a campaign as this
-- statement: for each wanted lease, how stale its holder's renewal is (DB clock)
-- and which other backend holds its lock, so a hung holder can be evicted. Rows for the leases
-- this session just got are ignored by the caller (their holder is us, hence excluded).
-- With spread placement `names` also lists leases watched but not tried this round (it is not
-- yet this replica's turn): a NULL holder_pid says they are free, which starts its wait.
SELECT w.name,
       -- last renewal: the lease's own stamp (acquisition) or its holder's last heartbeat,
       -- the latter only if made on the very session that holds the lock
       extract(epoch FROM now() - greatest(
           l.renewed_at, CASE WHEN r.backend_pid = h.pid THEN r.last_seen END
       ))::float8 AS renewed_age_s,
       h.pid AS holder_pid,
       l.holder_backend_pid,
       l.holder,
       -- a free lease whose row still names a holder that never released it: is that holder's
       -- lock session gone (it crashed)? Then the caller drops it from its placement view at
       -- once and the lease's next candidate tries now, not a placement step (or a heartbeat)
       -- later. Evaluated for free leases only.
       CASE WHEN h.pid IS NULL AND l.released_at IS NULL AND l.holder_backend_pid IS NOT NULL
            THEN NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.holder_backend_pid)
            ELSE false END AS holder_gone
FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
LEFT JOIN leasectl_leases l ON l.name = w.name
LEFT JOIN leasectl_replicas r ON r.id = l.holder
LEFT JOIN pg_locks h
       ON h.locktype = 'advisory' AND h.granted AND h.objsubid = 2
      AND h.pid <> pg_backend_pid()
      -- advisory locks are per database: another database's holder of the same key is not ours
      AND h.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND h.classid = (%(ns)s::bigint & 4294967295)::oid
      AND h.objid = (w.key::bigint & 4294967295)::oid

-- name: bump_epoch
-- The fencing token: run right after the lock is ours. `locked` takes the existing lease rows
-- FOR UPDATE first, so the bump waits for every in-flight guarded write of the previous holder
-- (FOR KEY SHARE or FOR SHARE) to commit or roll back; once it returns, old epochs are dead.
-- Across a failover: the epoch never drops below (timeline - 1) << 32, timeline being the one
-- this server writes WAL on now. A promoted standby writes on a higher timeline than its old
-- primary, so its first bump exceeds every epoch the old primary issued, even a bump that never
-- replicated (docs/safety.md, "Database failover"). On timeline 1 the floor is 0.
WITH tl AS (
    SELECT (('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint
            - 1) << 32 AS floor
), locked AS MATERIALIZED (
    SELECT name FROM leasectl_leases WHERE name = ANY(%(names)s::text[]) ORDER BY name FOR UPDATE
), bumped AS (
    INSERT INTO leasectl_leases AS l
           (name, key, epoch, holder, holder_backend_pid, acquired_at, renewed_at, released_at)
    SELECT w.name, w.key, greatest(1, (SELECT floor FROM tl)), %(replica)s, pg_backend_pid(),
           now(), now(), NULL
    FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
    WHERE (SELECT count(*) FROM locked) >= 0  -- forces the row locks before the upsert
    ON CONFLICT (name) DO UPDATE
    SET epoch = greatest(l.epoch + 1, (SELECT floor FROM tl)), key = excluded.key,
        holder = excluded.holder,
        holder_backend_pid = excluded.holder_backend_pid,
        acquired_at = now(), renewed_at = now(), released_at = NULL
    RETURNING name, epoch
), ev AS (
    INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason)
    SELECT name, epoch, %(replica)s, 'acquired', %(reason)s FROM bumped
)
SELECT name, epoch FROM bumped

-- name: heartbeat
-- One round trip that proves the locks are still held by this backend, that the server is a
-- primary, and that each lease's epoch is still ours. It renews them all at once by stamping
-- the replica row (last_seen + this lock session's pid): one row written per heartbeat,
-- whatever the number of leases. Eviction and `leasectl status` read that stamp.
-- With spread placement (%(placement)s) it also returns the live replicas placement ranks
-- (leasectl_live_replicas, migration 0012: the one definition a standby's poll reads too).
WITH mine AS (
    SELECT objid::bigint AS key_oid
    FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 2
      AND classid = (%(ns)s::bigint & 4294967295)::oid
), proven AS (
    SELECT l.name
    FROM leasectl_leases l
    JOIN unnest(%(names)s::text[], %(epochs)s::bigint[]) AS w(name, epoch)
      ON l.name = w.name AND l.epoch = w.epoch
    WHERE l.holder = %(replica)s
      AND (l.key::bigint & 4294967295) IN (SELECT key_oid FROM mine)
), unproven AS (
    -- normally empty: only the leases whose lock or epoch is no longer ours come back
    SELECT unnest(%(names)s::text[]) AS name
    EXCEPT
    SELECT name FROM proven
), seen AS (
    UPDATE leasectl_replicas SET last_seen = now(), backend_pid = pg_backend_pid()
    WHERE id = %(replica)s
)
SELECT pg_is_in_recovery(), ARRAY(SELECT name FROM unproven),
       (SELECT coalesce(json_agg(json_build_array(
                   id, campaigns_for, preferred_for, wedged, live_for, labels)), '[]'::json)
        FROM leasectl_live_replicas(%(replica)s, %(live_s)s) WHERE %(placement)s)

-- name: record_release
-- Graceful hand-over, first half: mark the rows released and record it. The same pipeline then
-- runs locks.sql's release (unlock + NOTIFY), so a waiting replica takes over at once; its
-- epoch bump waits for this statement's row locks, so the 'released' event always precedes
-- the next 'acquired' one.
WITH rel AS (
    SELECT w.name, w.epoch
    FROM unnest(%(names)s::text[], %(epochs)s::bigint[]) AS w(name, epoch)
), upd AS (
    UPDATE leasectl_leases l SET released_at = now()
    FROM rel
    WHERE l.name = rel.name AND l.epoch = rel.epoch AND l.holder = %(replica)s
)
INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason)
SELECT name, epoch, %(replica)s, 'released', %(reason)s FROM rel

-- name: release_leaving
-- A stopping replica's hand-over, second half (after record_release): mark it stopped, unlock,
-- and NOTIFY both "I am gone" (control channel) and each released lease in ONE transaction, so
-- every peer reads them in one batch: it drops this replica from its placement view and the
-- next candidate takes each lease in its first campaign (no placement step, no second try).
WITH stopped AS (
    UPDATE leasectl_replicas SET stopped_at = now(), last_seen = now() WHERE id = %(id)s
    RETURNING pg_notify('leasectl_control', %(payload)s)
)
SELECT w.name, pg_notify('leasectl_released', w.name)
FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
WHERE (SELECT count(*) FROM stopped) >= 0  -- the row and its NOTIFY first
  AND pg_advisory_unlock(%(ns)s::integer, w.key)

-- name: record_event
INSERT INTO leasectl_lease_events (lease, epoch, replica, event, reason)
VALUES (%(lease)s, %(epoch)s, %(replica)s, %(event)s, %(reason)s)

-- name: evict
-- Terminate a hung holder's lock session; the server then frees its locks.
SELECT pg_terminate_backend(%(pid)s)

-- name: listen_control
LISTEN leasectl_control

-- name: notify_control
SELECT pg_notify('leasectl_control', %(payload)s)

-- name: drain_replica
-- step-down --replica: kept in the row too, for a standby (no lock session hears the NOTIFY);
-- its next poll reads it (leasectl_standby_poll). cooldown NULL: the replica's own default.
UPDATE leasectl_replicas SET drain_requested_at = now(), drain_cooldown = %(cooldown)s
WHERE id = %(id)s

-- name: fence
-- Lease.guard: leasectl_fence (migration 0007) takes the lease row FOR KEY SHARE inside the
-- caller's transaction and is true only while the epoch is still ours.
SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s)

-- name: current_epoch
-- For the message of a refused fence only; takes no lock.
SELECT epoch FROM leasectl_leases WHERE name = %(lease_name)s

-- name: cluster_lease_names
-- Every lease name the cluster knows: the lease table and what each live replica declares.
-- A replica checks its own names' 32-bit keys against these (leasectl.keys.int4_hash is the
-- one definition of the key), because two names with one key would share one advisory lock.
SELECT name FROM leasectl_leases
UNION
SELECT unnest(campaigns_for) FROM leasectl_replicas WHERE stopped_at IS NULL
