-- +goose Up
-- When the reconciler last looked at a processing payment and had to leave
-- it (no verdict yet, or the lookup failed). Its scan takes payments never
-- looked at first, then the ones looked at longest ago: a batch of payments
-- that cannot be settled now must not hide, scan after scan, the ones
-- behind it that can.
ALTER TABLE payments ADD COLUMN reconciled_at timestamptz;

-- +goose Down
ALTER TABLE payments DROP COLUMN reconciled_at;
