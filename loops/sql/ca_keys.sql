-- name: lock_issuer_keys
-- Every stored CA key, locked for the rotation's one transaction: a concurrent first
-- issuance (job_processor's set_issuer_ca) waits, and sees the new KEK's world afterwards.
SELECT id, ca_key_pem FROM leasectl_certs.issuers
WHERE ca_key_pem IS NOT NULL
ORDER BY id
FOR UPDATE

-- name: store_issuer_key
UPDATE leasectl_certs.issuers SET ca_key_pem = %(key_pem)s WHERE id = %(id)s
