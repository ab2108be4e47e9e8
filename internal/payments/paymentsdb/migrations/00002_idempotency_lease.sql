-- +goose Up
-- The durable record of each idempotency key, completed: besides the unique
-- (client_id, idempotency_key) of 00001, a payment now carries the response
-- its key answered with, who is working on it, and when a charge was last
-- attempted. Redis may lose all of this; Postgres must not.
ALTER TABLE payments
    -- The final response (201 or 402), replayed byte for byte. NULL while
    -- processing: an unknown outcome is not an answer to keep.
    ADD COLUMN response_status      int,
    ADD COLUMN response_body        bytea,
    -- The lease: whoever holds lease_token until lease_expires_at drives
    -- the payment; after that, anyone may take it over. Times are the
    -- database's (now()), so replicas with skewed clocks agree.
    ADD COLUMN lease_token          text,
    ADD COLUMN lease_expires_at     timestamptz,
    -- When a request last set out to call the provider for this payment.
    -- The reconciler lets a payment fail for want of a charge only a grace
    -- period after this, when no request can still be on its way.
    ADD COLUMN charge_attempted_at  timestamptz NOT NULL DEFAULT now();

-- Final payments carry their response (checked for new rows only: rows
-- settled before this migration have none, and are rendered on replay).
ALTER TABLE payments ADD CONSTRAINT payments_final_has_response
    CHECK (status = 'processing' OR response_body IS NOT NULL) NOT VALID;

-- The reconciler's scan: old processing payments, oldest attempt first.
CREATE INDEX payments_processing_idx ON payments (charge_attempted_at) WHERE status = 'processing';

-- +goose Down
DROP INDEX payments_processing_idx;
ALTER TABLE payments
    DROP CONSTRAINT payments_final_has_response,
    DROP COLUMN response_status,
    DROP COLUMN response_body,
    DROP COLUMN lease_token,
    DROP COLUMN lease_expires_at,
    DROP COLUMN charge_attempted_at;
