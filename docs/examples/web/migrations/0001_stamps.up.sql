-- The web examples' table: one row per slot of the leased loop, under its epoch.
CREATE TABLE stamps (
    slot    timestamptz NOT NULL,
    replica text NOT NULL,
    epoch   bigint NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
