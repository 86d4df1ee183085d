-- Placement (leasectl/placement.py): every replica ranks the live candidates of a lease by
-- rendezvous hashing from these rows, so each one publishes what it declares about itself.
--   labels         replica.labels (shown by `leasectl status`; preferred_holder may name one)
--   campaigns_for  the leases it campaigns for now: it may lead, the loop runs there, the
--                  loop's requires_labels are met, no step-down cooldown or wedged tick
--   preferred_for  the leases whose preferred_holder names its id or one of its labels
--   connected_at   when its current lock session registered: a holder hands a lease to a
--                  better replica only once it has been live for leases.rebalance_after
ALTER TABLE leasectl_replicas
    ADD COLUMN labels text[] NOT NULL DEFAULT '{}',
    ADD COLUMN campaigns_for text[] NOT NULL DEFAULT '{}',
    ADD COLUMN preferred_for text[] NOT NULL DEFAULT '{}',
    ADD COLUMN connected_at timestamptz;
