-- name: try_acquire
-- Try-lock every requested key in one round trip; never blocks. Returns, per key, whether
-- this session got it and which backend holds it otherwise.
SELECT w.key,
       pg_try_advisory_lock(%(ns)s::integer, w.key) AS got
FROM unnest(%(keys)s::integer[]) AS w(key)

-- name: release
-- Release keys held by this session; returns the names whose keys were actually held and,
-- when asked, NOTIFYs their release so waiters take over at once (same round trip).
SELECT w.name, CASE WHEN %(notify)s THEN pg_notify('leasectl_released', w.name) END
FROM unnest(%(names)s::text[], %(keys)s::integer[]) AS w(name, key)
WHERE pg_advisory_unlock(%(ns)s::integer, w.key)

-- name: held
-- The keys this backend really holds in our namespace (pg_locks shows int4 keys as oids).
SELECT objid::bigint AS key_oid
FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
  AND classid = %(ns_oid)s::bigint::oid AND objsubid = 2

-- name: holders
-- Who holds which of the given keys: the truth from pg_locks joined with the session.
SELECT l.objid::bigint AS key_oid, l.pid, a.application_name, host(a.client_addr) AS client_addr,
       extract(epoch FROM now() - a.backend_start)::float8 AS connected_s, a.state
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  -- advisory locks are per database: only holders in this database contend with us
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(ns_oid)s::bigint::oid
  AND l.objid = ANY(%(key_oids)s::bigint[]::oid[])

-- name: backend_pid
SELECT pg_backend_pid()

-- name: probe_other
-- Run by a second client inside an open transaction: which backend serves it, and does it
-- see the lock session's probe setting (it must not).
SELECT pg_backend_pid(), current_setting('leasectl.session_probe', true)

-- name: session_setup
-- Session settings of the lock connection. The server-side TCP settings bound D_srv: the time
-- after which the server drops a silent (partitioned) holder and frees its locks.
SELECT pg_backend_pid() AS pid,
       set_config('idle_session_timeout', '0', false),
       set_config('idle_in_transaction_session_timeout', '0', false),
       set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('tcp_keepalives_idle', %(idle)s, false),
       set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false),
       set_config('tcp_user_timeout', %(user_timeout)s, false),
       set_config('leasectl.session_probe', %(probe)s, false),
       -- psycopg prepares repeated queries; a generic plan for the array parameters of the
       -- campaign and heartbeat is many times slower than a custom one (1,000 leases: ~80 ms
       -- instead of ~8 ms), so the lock connection always plans for the actual arrays.
       set_config('plan_cache_mode', 'force_custom_plan', false)

-- name: session_readback
-- Read back what is actually in force (a Unix socket reports 0 for every TCP setting).
SELECT pg_backend_pid() AS pid,
       current_setting('leasectl.session_probe', true) AS probe,
       current_setting('tcp_keepalives_idle')::integer AS idle,
       current_setting('tcp_keepalives_interval')::integer AS interval,
       current_setting('tcp_keepalives_count')::integer AS count,
       current_setting('tcp_user_timeout')::integer AS user_timeout,
       pg_is_in_recovery() AS in_recovery

-- name: listen_released
LISTEN leasectl_released

-- name: hold_replica
-- This replica's liveness lock, held by the lock connection for as long as its session lives
-- (its own key space: the replica namespace, never a lease key). A peer's watch connection
-- waits on it (watch_replica) and is woken by the server the instant this session ends.
SELECT pg_try_advisory_lock(%(ns)s::integer, %(key)s::integer)

-- name: watch_replica
-- The watch connection's one statement: wait, inside the server, until the watched replica's
-- lock session ends, then tell every replica at once (NOTIFY on the control channel; it is
-- delivered only if this transaction commits, i.e. only if the wait succeeded). Evaluated in
-- CASE order: first this transaction's own lock_timeout (local: it bounds this wait, and so
-- the snapshot it holds, even behind a transaction pooler where a session SET would not stick),
-- then a try-lock (a free lock: nobody to watch, false, nothing sent), then the wait.
-- A transaction-level lock: released at the commit right after, never held by the session.
SELECT CASE
    WHEN set_config('lock_timeout', %(lock_timeout)s, true) IS NULL THEN NULL
    WHEN pg_try_advisory_xact_lock(%(ns)s::integer, %(key)s::integer) THEN false
    ELSE pg_advisory_xact_lock(%(ns)s::integer, %(key)s::integer)::text
         || pg_notify('leasectl_control', %(payload)s)::text = ''
END AS ended

-- name: watch_setup
-- Session settings of the watch connection: a server-wide idle timeout must not end it.
SELECT set_config('idle_session_timeout', '0', false),
       set_config('idle_in_transaction_session_timeout', '0', false)
