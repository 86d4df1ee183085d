CREATE TABLE cancels (
    loop    text NOT NULL,
    replica text NOT NULL,
    epoch   bigint,
    at      timestamptz NOT NULL DEFAULT now()
);
