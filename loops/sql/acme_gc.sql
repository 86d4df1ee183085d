-- name: delete_nonces
DELETE FROM leasectl_certs.acme_nonces WHERE used OR expires_at < now()

-- name: expire_authorizations
UPDATE leasectl_certs.acme_authorizations SET status = 'expired'
WHERE status = 'pending' AND expires_at < now()

-- name: invalidate_orders
UPDATE leasectl_certs.acme_orders
SET status = 'invalid',
    error = '{"type": "urn:ietf:params:acme:error:serverInternal", "detail": "order expired before issuance", "status": 500}'::jsonb,
    updated_at = now()
WHERE status IN ('pending', 'ready', 'processing') AND expires_at < now()
