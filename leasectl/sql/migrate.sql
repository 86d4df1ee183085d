-- name: ledger_exists
SELECT to_regclass('leasectl_schema_migrations') IS NOT NULL

-- name: create_ledger
-- The ledger: one row per applied file, written in the same transaction as the file. Named
-- leasectl's own: `schema_migrations` belongs to golang-migrate, dbmate and Rails.
CREATE TABLE IF NOT EXISTS leasectl_schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    applied_by  text NOT NULL,
    -- which migration folder a row came from: leasectl's own, or an App's (App(migrations=))
    source      text NOT NULL DEFAULT 'leasectl'
)

-- name: applied
SELECT version, checksum, applied_at FROM leasectl_schema_migrations ORDER BY version

-- name: record
INSERT INTO leasectl_schema_migrations (version, source, checksum, duration_ms, applied_by)
VALUES (%(version)s, %(source)s, %(checksum)s, %(duration_ms)s, %(applied_by)s)

-- name: rename_replaced
-- A source's file that replaces one recorded under another key (the certificate schema, once
-- leasectl's own 0003_domain): the row moves to the new key and checksum, nothing is re-run.
UPDATE leasectl_schema_migrations
SET version = %(version)s, source = %(source)s, checksum = %(checksum)s
WHERE version = %(replaces)s
  AND NOT EXISTS (SELECT 1 FROM leasectl_schema_migrations WHERE version = %(version)s)

-- name: legacy_ledger
-- leasectl 0.1 kept its ledger in `schema_migrations`. That name is common, so the table is
-- taken for ours only when it has exactly our columns (the catalog is read, never the rows of
-- a table that is not ours), leasectl's core tables exist, and its first row is our 0001 file
-- with the checksum it has always had.
SELECT count(*) FILTER (WHERE a.attname IN ('version', 'checksum', 'applied_at', 'duration_ms',
                                           'applied_by')) = 5
       AND count(*) FILTER (WHERE a.attname <> 'source') = 5
       AND to_regclass('leasectl_leases') IS NOT NULL
       AND to_regclass('leasectl_schema_migrations') IS NULL
FROM pg_attribute a
WHERE a.attrelid = to_regclass('schema_migrations') AND a.attnum > 0 AND NOT a.attisdropped

-- name: legacy_first_row
SELECT checksum FROM schema_migrations WHERE version = '0001_leasectl_core'

-- name: legacy_applied
-- Only once legacy_ledger said the table is ours (migrate --status on a 0.1 database).
SELECT version, checksum FROM schema_migrations

-- name: adopt_legacy_ledger
-- Ours: rename it (and its primary key) in place, rows and all.
ALTER TABLE schema_migrations RENAME TO leasectl_schema_migrations

-- name: adopt_legacy_pkey
ALTER INDEX IF EXISTS schema_migrations_pkey RENAME TO leasectl_schema_migrations_pkey

-- name: adopt_legacy_source
-- The oldest ledgers predate the source column.
ALTER TABLE leasectl_schema_migrations
    ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'leasectl'

-- name: mark_holder
-- Advertise when we took the migration lock, so a waiter's timeout can say for how long.
SELECT set_config('application_name', %(app)s, false)
