-- name: owners
INSERT INTO leasectl_certs.owners (id, name, email) VALUES (%(id)s, %(name)s, %(email)s)

-- name: issuer
-- A local CA: job_processor signs with it, crl_generation publishes its CRL.
INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem)
VALUES (%(id)s, %(name)s, 'local', %(cert)s, %(key)s)

-- name: policy
INSERT INTO leasectl_certs.renewal_policies (id, name, renewal_window_days, auto_renew, alert_channels)
VALUES (%(id)s, %(name)s, %(window)s, true, %(channels)s::jsonb)

-- name: certificate
INSERT INTO leasectl_certs.managed_certificates
       (id, name, common_name, sans, environment, owner_id, issuer_id, renewal_policy_id,
        status, expires_at)
VALUES (%(id)s, %(name)s, %(cn)s, %(sans)s, %(env)s, %(owner)s, %(issuer)s, %(policy)s,
        %(status)s, %(expires_at)s)

-- name: version
INSERT INTO leasectl_certs.certificate_versions
       (certificate_id, serial_number, not_before, not_after, fingerprint_sha256, pem_chain,
        key_algorithm, key_size)
VALUES (%(cert)s, %(serial)s, %(not_before)s, %(not_after)s, %(fp)s, %(pem)s, %(alg)s, %(size)s)

-- name: revocation
INSERT INTO leasectl_certs.certificate_revocations (certificate_id, serial_number, reason, revoked_by, issuer_id)
VALUES (%(cert)s, %(serial)s, %(reason)s, 'demo', %(issuer)s)

-- name: job
INSERT INTO leasectl_certs.jobs (id, type, certificate_id, status) VALUES (%(id)s, 'Issuance', %(cert)s, 'Pending')

-- name: counters
-- What the loops have done so far, for the demo's live view.
SELECT (SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed') AS jobs_done,
       (SELECT count(*) FROM leasectl_certs.jobs) AS jobs_total,
       (SELECT count(*) FROM leasectl_certs.certificate_versions) AS versions,
       (SELECT count(*) FROM leasectl_certs.notification_events WHERE status = 'sent') AS notifications_sent,
       (SELECT count(*) FROM leasectl_certs.notification_events) AS notifications_total,
       (SELECT coalesce(max(crl_number), 0) FROM leasectl_certs.crl_cache) AS crl_number

-- name: recent_events
-- The last lease transitions: watch a lease move after killing its holder.
SELECT to_char(at, 'HH24:MI:SS.MS') AS at, lease, epoch, replica, event, coalesce(reason, '')
FROM leasectl_lease_events
WHERE left(lease, 9) <> 'leasectl:'
ORDER BY id DESC
LIMIT %(n)s

-- name: per_loop
-- For the leases x replicas table: each leased loop's last completed slot, who ran it, and
-- the notifications each lease has delivered (claimed_lease is the sending loop's lease).
SELECT t.loop,
       extract(epoch FROM clock_timestamp() - max(t.finished_at))::float8 AS last_tick_age_s,
       (array_agg(t.replica ORDER BY t.tick_at DESC))[1] AS last_replica,
       (SELECT count(*) FROM leasectl_certs.notification_events n
         WHERE n.claimed_lease = t.loop AND n.status = 'sent') AS deliveries
FROM leasectl_ticks t
WHERE t.outcome = 'ok'
GROUP BY t.loop
