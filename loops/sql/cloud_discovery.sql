-- name: ensure_agent
-- The sentinel agent discovered rows hang off (discovered_certificates.agent_id is NOT NULL).
INSERT INTO leasectl_certs.agents (id, name, hostname, status)
VALUES (%(agent_id)s, %(agent_id)s, NULL, 'Online')
ON CONFLICT DO NOTHING

-- name: start_scan
INSERT INTO leasectl_certs.discovery_scans (agent_id, source, directories, started_at, epoch, replica)
VALUES (%(agent_id)s, %(source)s, %(directories)s, %(started_at)s, %(lease_epoch)s, %(replica)s)
RETURNING id

-- name: finish_scan
UPDATE leasectl_certs.discovery_scans
SET certificates_found = %(found)s, certificates_new = %(new)s, errors_count = %(errors_count)s,
    errors = %(errors)s, scan_duration_ms = %(duration_ms)s, completed_at = now()
WHERE id = %(scan_id)s
