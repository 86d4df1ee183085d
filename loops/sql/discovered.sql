-- name: upsert
-- Store a certificate a scan saw (network scan, cloud discovery). Seen again at the same place:
-- only last_seen_at and the scan move; triage state (status, managed link) is the operator's
-- and is never overwritten. Returns whether the row is new.
INSERT INTO leasectl_certs.discovered_certificates
    (fingerprint_sha256, common_name, sans, serial_number, issuer_dn, subject_dn, not_before,
     not_after, key_algorithm, key_size, is_ca, pem_data, source_path, source_format, agent_id,
     discovery_scan_id)
VALUES (%(fingerprint)s, %(common_name)s, %(sans)s, %(serial)s, %(issuer_dn)s, %(subject_dn)s,
        %(not_before)s, %(not_after)s, %(key_algorithm)s, %(key_size)s, %(is_ca)s, %(pem)s,
        %(source_path)s, %(source_format)s, %(agent_id)s, %(scan_id)s)
ON CONFLICT (fingerprint_sha256, agent_id, source_path) DO UPDATE
SET last_seen_at = now(), discovery_scan_id = excluded.discovery_scan_id, updated_at = now()
RETURNING (xmax = 0) AS inserted
