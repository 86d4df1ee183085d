-- The certificate loops keep their tables in their own schema, so that a service database with
-- its own `jobs`, `sessions` or `owners` can run them (issue 19). These migrations are applied
-- only for an App that includes the certificate loops, recorded in leasectl's ledger under the
-- source `leasectl_certs`.
CREATE SCHEMA IF NOT EXISTS leasectl_certs;

-- A database built by leasectl 0.1 has these tables in its default schema, created by
-- leasectl's own 0003_domain: the certificate loops' registry declares that file as replaced by
-- 0002_domain here, and the ledger row was renamed before this file runs. Only then, they move
-- (with their indexes, constraints, sequences and triggers): a `jobs` table that leasectl did
-- not create is never touched.
DO $$
DECLARE
    t text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM leasectl_schema_migrations
                   WHERE version = 'leasectl_certs:0002_domain') THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY[
        'owners', 'issuers', 'certificate_profiles', 'renewal_policies', 'managed_certificates',
        'certificate_versions', 'agents', 'jobs', 'notification_events',
        'certificate_revocations', 'crl_cache', 'crl_generation_events', 'discovery_scans',
        'discovered_certificates', 'network_scan_targets', 'endpoint_health_checks',
        'endpoint_health_history', 'acme_nonces', 'acme_orders', 'acme_authorizations',
        'sessions', 'audit_events', 'digest_sends']
    LOOP
        IF to_regclass(format('%I.%I', current_schema(), t)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I.%I SET SCHEMA leasectl_certs', current_schema(), t);
        END IF;
    END LOOP;
    IF to_regprocedure(format('%I.jobs_status_changed()', current_schema())) IS NOT NULL THEN
        EXECUTE format('ALTER FUNCTION %I.jobs_status_changed() SET SCHEMA leasectl_certs',
                       current_schema());
    END IF;
END
$$;
