-- name: ensure_agent
-- The sentinel agent discovered rows hang off (discovered_certificates.agent_id is NOT NULL).
INSERT INTO agents (id, name, hostname, status)
VALUES (%(agent_id)s, %(agent_id)s, NULL, 'Online')
ON CONFLICT DO NOTHING

-- name: start_scan
INSERT INTO discovery_scans (agent_id, source, directories, started_at, epoch, replica)
VALUES (%(agent_id)s, %(source)s, %(directories)s, %(started_at)s, %(lease_epoch)s, %(replica)s)
RETURNING id

-- name: upsert_certificate
-- Seen again: only last_seen_at and the scan move. Triage state (status, managed link) is the
-- operator's and is never overwritten. Returns whether the row is new.
INSERT INTO discovered_certificates
    (fingerprint_sha256, common_name, sans, serial_number, issuer_dn, subject_dn, not_before,
     not_after, key_algorithm, key_size, is_ca, pem_data, source_path, source_format, agent_id,
     discovery_scan_id)
VALUES (%(fingerprint)s, %(common_name)s, %(sans)s, %(serial)s, %(issuer_dn)s, %(subject_dn)s,
        %(not_before)s, %(not_after)s, %(key_algorithm)s, %(key_size)s, %(is_ca)s, %(pem)s,
        %(source_path)s, %(source_format)s, %(agent_id)s, %(scan_id)s)
ON CONFLICT (fingerprint_sha256, agent_id, source_path) DO UPDATE
SET last_seen_at = now(), discovery_scan_id = excluded.discovery_scan_id, updated_at = now()
RETURNING (xmax = 0) AS inserted

-- name: finish_scan
UPDATE discovery_scans
SET certificates_found = %(found)s, certificates_new = %(new)s, errors_count = %(errors_count)s,
    errors = %(errors)s, scan_duration_ms = %(duration_ms)s, completed_at = now()
WHERE id = %(scan_id)s
