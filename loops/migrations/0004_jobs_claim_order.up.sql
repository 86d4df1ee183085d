-- The claim reads pending jobs in (scheduled_at, id) order; with only scheduled_at indexed,
-- jobs sharing a scheduled_at (bulk inserts) were sorted on every claim. The new index serves
-- the ORDER BY directly; it replaces the narrower one.
CREATE INDEX jobs_claim_order ON leasectl_certs.jobs (scheduled_at, id) WHERE status = 'Pending';
DROP INDEX leasectl_certs.jobs_claim;
