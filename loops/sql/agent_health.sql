-- name: mark_offline
-- Online agents whose last heartbeat (or, never having sent one, their registration) is older
-- than the threshold become Offline. Only the status column is written, and the WHERE is
-- re-checked on the newest row version, so a heartbeat that lands concurrently wins (certctl
-- wrote the whole row back and could overwrite it: defect #9).
UPDATE leasectl_certs.agents
SET status = 'Offline'
WHERE status = 'Online'
  AND retired_at IS NULL
  AND coalesce(last_heartbeat_at, registered_at) < now() - %(seconds)s * interval '1 second'
RETURNING id
