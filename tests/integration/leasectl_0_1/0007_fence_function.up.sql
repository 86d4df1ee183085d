-- The fence predicate, written once. Every fenced statement calls leasectl_fence(name, epoch)
-- (leasectl.FENCE_SQL, Lease.guard, the tick ledger): true while `epoch` is the lease's current
-- epoch. It takes the lease row FOR KEY SHARE, held until the caller's transaction ends, so
--   * a new holder's epoch bump (FOR UPDATE on the row) waits for the fenced write to commit
--     or roll back, and once the bump returns no write under the old epoch can commit;
--   * the holder's own renewals (no-key UPDATEs) never wait for its fenced work: a long tick
--     must not stall the heartbeat.
-- A write racing a bump waits for it and then re-checks the row (READ COMMITTED re-evaluates
-- the WHERE clause on the new version): the moved epoch no longer matches and the fence is false.
-- VOLATILE because it locks; callers wrap it in a scalar subquery so it runs once per statement.
CREATE FUNCTION leasectl_fence(lease_name text, lease_epoch bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
AS $$
BEGIN
    PERFORM 1 FROM leasectl_leases WHERE name = lease_name AND epoch = lease_epoch FOR KEY SHARE;
    RETURN FOUND;
END
$$;
