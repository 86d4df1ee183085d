-- Loops whose tick on this replica outlived timeout + scheduler.wedge_grace (a call that never
-- returned). The replica gave their leases up; `leasectl status` shows them until they return.
ALTER TABLE leasectl_replicas ADD COLUMN wedged text[] NOT NULL DEFAULT '{}';
