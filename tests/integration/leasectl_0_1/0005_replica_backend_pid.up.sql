-- A heartbeat renews every lease of a replica at once by stamping the replica row with the
-- lock session that proved them (one row per heartbeat instead of one per lease). The backend
-- pid ties that renewal to the session that actually holds the locks, so a restarted process
-- reusing a configured replica id cannot keep a hung predecessor's leases alive.
ALTER TABLE leasectl_replicas ADD COLUMN backend_pid integer;
