-- Statements of a standby replica (leases.standby: pooled), run by leasectl.standby on its one
-- connection through the work DSN. That DSN may be a transaction-mode pooler (PgBouncer, RDS
-- Proxy, Supavisor), so each statement is self-contained: no session state, nothing prepared.

-- name: poll
-- One round trip per poll; the work is leasectl_standby_poll (migration 0012), a server-side
-- function so that its plan is cached on the pooler's server connection.
SELECT registered, view_hash, replicas, leases, drain_age_s, drain_cooldown
FROM leasectl_standby_poll(%(id)s, %(host)s, %(pid)s, %(version)s, %(may_lead)s, %(loops)s,
                           %(labels)s, %(campaigns_for)s, %(preferred_for)s, %(names)s,
                           %(live_s)s, %(seen)s, %(want)s)

-- name: stopped
-- A standby's graceful stop: it holds nothing, so there is nothing to hand over.
UPDATE leasectl_replicas SET stopped_at = now(), last_seen = now() WHERE id = %(id)s AND standby
