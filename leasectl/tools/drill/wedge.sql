-- name: create_wedge_writes
-- The drill's wedge loop writes one row per wedged tick here, fenced: a row under the wedged
-- epoch would be a late write the fence failed to refuse.
CREATE TABLE IF NOT EXISTS drill_wedge_writes (
    slot timestamptz NOT NULL,
    replica text NOT NULL,
    epoch bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)

-- name: wedge_write
-- The wedged tick's write once its blocking call returns (inside ctx.transaction(): fenced).
INSERT INTO drill_wedge_writes (slot, replica, epoch) VALUES (%(slot)s, %(replica)s, %(epoch)s)

-- name: wedge_writes_of
-- Did a wedged tick's late write commit? (It must not: its epoch was superseded.)
SELECT count(*) FROM drill_wedge_writes
WHERE replica = %(replica)s AND epoch = %(epoch)s AND slot = %(slot)s::timestamptz

-- name: replica_wedged
-- What the replica reports as wedged in its row (``leasectl status`` shows the same).
SELECT wedged FROM leasectl_replicas WHERE id = %(replica)s
