-- name: expire_short_lived
-- Certificates of a short-lived profile (allow_short_lived and 0 < max_ttl_seconds < 3600)
-- that are past expires_at become Expired, and each gets one audit row, in one statement.
WITH expired AS (
    UPDATE leasectl_certs.managed_certificates AS c
    SET status = 'Expired', updated_at = now()
    FROM leasectl_certs.certificate_profiles AS p
    WHERE p.id = c.certificate_profile_id
      AND p.allow_short_lived
      AND p.max_ttl_seconds > 0 AND p.max_ttl_seconds < 3600
      AND c.status IN ('Active', 'Expiring')
      AND c.expires_at <= now()
    RETURNING c.id, c.expires_at, c.certificate_profile_id
)
INSERT INTO leasectl_certs.audit_events (actor, actor_type, action, resource_type, resource_id, details)
SELECT %(actor)s, 'System', 'short_lived_cert_expired', 'certificate', e.id,
       jsonb_build_object('expires_at', e.expires_at, 'profile_id', e.certificate_profile_id)
FROM expired AS e
RETURNING resource_id
