-- Issue 12: notifications may go to Slack, Microsoft Teams, PagerDuty and OpsGenie besides
-- e-mail and webhooks (certctl's six channels). The CHECK is widened, not dropped: a typo in
-- a policy's alert_channels must still fail the insert instead of queueing an undeliverable
-- row. The CA key column is unchanged: its PEM header says whether a key is encrypted
-- (-----BEGIN ENCRYPTED PRIVATE KEY-----), and loops/ca_keys.py refuses plaintext ones
-- unless loops.ca.allow_plaintext_ca_keys is set.
ALTER TABLE leasectl_certs.notification_events DROP CONSTRAINT notification_events_channel_check;
ALTER TABLE leasectl_certs.notification_events ADD CONSTRAINT notification_events_channel_check
    CHECK (channel IN ('Email', 'Webhook', 'Slack', 'Teams', 'PagerDuty', 'OpsGenie'));
