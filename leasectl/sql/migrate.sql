-- name: ledger_exists
SELECT to_regclass('schema_migrations') IS NOT NULL

-- name: create_ledger
-- The ledger: one row per applied file, written in the same transaction as the file.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    applied_by  text NOT NULL
)

-- name: ledger_source_column
-- Which migration folder a row came from: leasectl's own, or an application's (App(migrations=)).
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'leasectl'

-- name: applied
SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version

-- name: record
INSERT INTO schema_migrations (version, source, checksum, duration_ms, applied_by)
VALUES (%(version)s, %(source)s, %(checksum)s, %(duration_ms)s, %(applied_by)s)

-- name: mark_holder
-- Advertise when we took the migration lock, so a waiter's timeout can say for how long.
SELECT set_config('application_name', %(app)s, false)
