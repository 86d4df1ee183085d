-- The leases a replica's App declares (its leased loops, whether or not its labels let it hold
-- them), written as its lock session registers. `leasectl status` without --app expects the
-- leases the live and recent replicas declared: the cluster knows what it runs, a local
-- configuration may not (a service's own App, not the shipped loops).
ALTER TABLE leasectl_replicas ADD COLUMN declared_leases text[] NOT NULL DEFAULT '{}';
