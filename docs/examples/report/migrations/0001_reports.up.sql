-- The example's own table, applied after leasectl's migrations under the same lock/ledger.
CREATE TABLE reports (
    slot    timestamptz NOT NULL,
    replica text NOT NULL,
    epoch   bigint NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
