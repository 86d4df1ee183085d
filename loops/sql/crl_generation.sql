-- name: issuers_with_keys
-- Only issuers that can sign: a local CA with its key. Others (ACME, external) have no CRL
-- to generate here, so they are not attempted (certctl logged a failure for each, every tick).
SELECT id, ca_cert_pem, ca_key_pem
FROM leasectl_certs.issuers
WHERE enabled AND ca_cert_pem IS NOT NULL AND ca_key_pem IS NOT NULL
ORDER BY id

-- name: revoked_entries
-- The issuer's revocations; short-lived certificates (profile TTL under an hour) are left
-- out, as in certctl: they expire before a CRL would be fetched.
SELECT r.serial_number, r.reason, r.revoked_at
FROM leasectl_certs.certificate_revocations r
LEFT JOIN leasectl_certs.managed_certificates mc ON mc.id = r.certificate_id
LEFT JOIN leasectl_certs.certificate_profiles p ON p.id = mc.certificate_profile_id
WHERE r.issuer_id = %(issuer_id)s
  AND NOT COALESCE(p.allow_short_lived AND p.max_ttl_seconds > 0 AND p.max_ttl_seconds < 3600,
                   false)
ORDER BY r.revoked_at, r.serial_number

-- name: next_crl_number
-- The CRL number: a per-issuer counter bumped in the fenced transaction that publishes the
-- CRL, never a timestamp. Fenced by leasectl_fence (the one definition of the fence, as in
-- leasectl.FENCE_SQL): a superseded holder's bump matches no row, and the issuer row lock
-- orders concurrent bumps, so numbers only go up.
UPDATE leasectl_certs.issuers SET crl_number = crl_number + 1
WHERE id = %(issuer_id)s AND (SELECT leasectl_fence(%(lease_name)s, %(lease_epoch)s))
RETURNING crl_number

-- name: store_crl
INSERT INTO leasectl_certs.crl_cache AS c (issuer_id, crl_der, crl_number, this_update, next_update,
                            generated_at, generation_duration_ms, revoked_count, epoch,
                            updated_at)
VALUES (%(issuer_id)s, %(crl_der)s, %(crl_number)s, %(this_update)s, %(next_update)s, now(),
        %(duration_ms)s, %(revoked_count)s, %(lease_epoch)s, now())
ON CONFLICT (issuer_id) DO UPDATE
SET crl_der = excluded.crl_der, crl_number = excluded.crl_number,
    this_update = excluded.this_update, next_update = excluded.next_update,
    generated_at = excluded.generated_at,
    generation_duration_ms = excluded.generation_duration_ms,
    revoked_count = excluded.revoked_count, epoch = excluded.epoch, updated_at = now()

-- name: record_event
INSERT INTO leasectl_certs.crl_generation_events (issuer_id, crl_number, duration_ms, revoked_count, epoch,
                                   replica, started_at, succeeded, error)
VALUES (%(issuer_id)s, %(crl_number)s, %(duration_ms)s, %(revoked_count)s, %(lease_epoch)s,
        %(replica)s, %(started_at)s, %(succeeded)s, %(error)s)
