-- Columns the leased loops need for the fence protocol (claim under an epoch, re-deliver
-- what an older epoch claimed, mark done under the epoch).

-- Epochs are per lease, so a claim records which lease's epoch it carries: a row claimed
-- by notification_send (epoch 7) must not look "older" to notification_retry (epoch 9).
ALTER TABLE leasectl_certs.notification_events ADD COLUMN claimed_lease text;
ALTER TABLE leasectl_certs.notification_events ADD COLUMN attempted_at timestamptz;
CREATE INDEX notification_events_sending ON leasectl_certs.notification_events (claimed_lease, claimed_epoch)
    WHERE status = 'sending';

-- Which epoch wrote a discovery scan (audit: a zombie's scan cannot commit, see FENCE).
ALTER TABLE leasectl_certs.discovery_scans ADD COLUMN epoch bigint;
ALTER TABLE leasectl_certs.discovery_scans ADD COLUMN replica text;
