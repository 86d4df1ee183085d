-- Lease bookkeeping. The advisory locks are the truth about who holds a lease;
-- these tables add the fencing epoch, history and what `leasectl status` shows.

CREATE TABLE leasectl_leases (
    name               text PRIMARY KEY,
    key                integer NOT NULL,
    epoch              bigint NOT NULL DEFAULT 0,
    holder             text,
    holder_backend_pid integer,
    acquired_at        timestamptz,
    renewed_at         timestamptz,
    released_at        timestamptz
);

CREATE TABLE leasectl_replicas (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    may_lead    boolean NOT NULL DEFAULT true,
    loops       text[] NOT NULL DEFAULT '{}',
    stopped_at  timestamptz
);

-- One row per lease transition: the audit trail of who held what, when and why.
CREATE TABLE leasectl_lease_events (
    id        bigserial PRIMARY KEY,
    lease     text NOT NULL,
    epoch     bigint,
    replica   text NOT NULL,
    event     text NOT NULL,
    reason    text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leasectl_lease_events_lease_at ON leasectl_lease_events (lease, at);
