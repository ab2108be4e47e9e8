-- +goose Up
-- The keys' durable record moves to the platform's idempotency_keys (its
-- own migrations, applied before these), where any resource's keys live:
-- each payment's key, fingerprint, lease, attempt time and stored answer
-- are copied there, and dropped from payments. Stop the old version
-- before this runs: it reads the columns this drops.
INSERT INTO idempotency_keys (scope, key, fingerprint, kind, resource_id, lease_token, lease_expires_at,
                              attempted_at, checked_at, response_status, response_header, response_body,
                              created_at, completed_at)
SELECT client_id, idempotency_key, request_fingerprint, 'payment', id, lease_token, lease_expires_at,
       charge_attempted_at, reconciled_at, response_status,
       CASE WHEN response_status IS NULL THEN NULL
            WHEN response_status = 201 THEN jsonb_build_object(
                'Content-Type', jsonb_build_array('application/json'),
                'Location', jsonb_build_array('/v1/payments/' || id))
            ELSE jsonb_build_object('Content-Type', jsonb_build_array('application/problem+json'))
       END,
       response_body, created_at, CASE WHEN response_status IS NOT NULL THEN updated_at END
FROM payments;

DROP INDEX payments_processing_idx;
ALTER TABLE payments
    DROP CONSTRAINT payments_final_has_response,
    DROP CONSTRAINT payments_client_key_unique,
    DROP COLUMN idempotency_key,
    DROP COLUMN request_fingerprint,
    DROP COLUMN response_status,
    DROP COLUMN response_body,
    DROP COLUMN lease_token,
    DROP COLUMN lease_expires_at,
    DROP COLUMN charge_attempted_at,
    DROP COLUMN reconciled_at,
    -- What has been given back, and what refunds in progress have
    -- reserved: together never more than the payment, whatever runs at
    -- once (every change is made under the payment's row lock, and this
    -- check is the last line).
    ADD COLUMN amount_refunded       bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    ADD COLUMN amount_refund_pending bigint NOT NULL DEFAULT 0 CHECK (amount_refund_pending >= 0),
    ADD CONSTRAINT payments_refunds_within_amount CHECK (amount_refunded + amount_refund_pending <= amount);

CREATE TABLE refunds (
    id                 text        PRIMARY KEY,
    payment_id         text        NOT NULL REFERENCES payments (id),
    client_id          text        NOT NULL,
    amount             bigint      NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    reason             text        NOT NULL DEFAULT '',
    status             text        NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed')),
    provider_refund_id text,
    failure_code       text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- GET /v1/payments/{id}/refunds lists a payment's refunds newest first.
CREATE INDEX refunds_payment_created_idx ON refunds (payment_id, created_at DESC, id DESC);

-- +goose Down
DROP TABLE refunds;
ALTER TABLE payments
    DROP CONSTRAINT payments_refunds_within_amount,
    DROP COLUMN amount_refunded,
    DROP COLUMN amount_refund_pending,
    ADD COLUMN idempotency_key     text,
    ADD COLUMN request_fingerprint text,
    ADD COLUMN response_status     int,
    ADD COLUMN response_body       bytea,
    ADD COLUMN lease_token         text,
    ADD COLUMN lease_expires_at    timestamptz,
    ADD COLUMN charge_attempted_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN reconciled_at       timestamptz;
UPDATE payments p
SET idempotency_key = k.key, request_fingerprint = k.fingerprint, response_status = k.response_status,
    response_body = k.response_body, lease_token = k.lease_token, lease_expires_at = k.lease_expires_at,
    charge_attempted_at = k.attempted_at, reconciled_at = k.checked_at
FROM idempotency_keys k
WHERE k.kind = 'payment' AND k.resource_id = p.id;
DELETE FROM idempotency_keys WHERE kind IN ('payment', 'refund');
ALTER TABLE payments
    ALTER COLUMN idempotency_key SET NOT NULL,
    ALTER COLUMN request_fingerprint SET NOT NULL,
    ADD CONSTRAINT payments_client_key_unique UNIQUE (client_id, idempotency_key),
    ADD CONSTRAINT payments_final_has_response CHECK (status = 'processing' OR response_body IS NOT NULL) NOT VALID;
CREATE INDEX payments_processing_idx ON payments (charge_attempted_at) WHERE status = 'processing';
