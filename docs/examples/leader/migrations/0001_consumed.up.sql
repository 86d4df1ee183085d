-- The example's own table: one row per batch the leader consumed, under its epoch.
CREATE TABLE consumed (
    id      bigserial PRIMARY KEY,
    replica text NOT NULL,
    epoch   bigint NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
