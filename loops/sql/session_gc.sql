-- name: delete_sessions
-- Sessions past their absolute expiry, and pre-login sessions older than the pre-login TTL.
DELETE FROM leasectl_certs.sessions
WHERE absolute_expires_at < now()
   OR (is_pre_login AND created_at < now() - %(pre_login_seconds)s * interval '1 second')
