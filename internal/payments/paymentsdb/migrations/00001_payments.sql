-- +goose Up
-- One row per payment. The unique (client_id, idempotency_key) pair is the
-- durable half of idempotency: whatever happens to Redis, a client's key can
-- name at most one payment, so a retry can never create a second one.
CREATE TABLE payments (
    id                  text        PRIMARY KEY,
    client_id           text        NOT NULL,
    idempotency_key     text        NOT NULL,
    -- SHA-256 of method, route, client and canonical body: a key reused for
    -- a different request is detected and refused.
    request_fingerprint text        NOT NULL,
    amount              bigint      NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
    currency            text        NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    description         text        NOT NULL DEFAULT '',
    metadata            jsonb       NOT NULL DEFAULT '{}',
    status              text        NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed')),
    provider_charge_id  text,
    failure_code        text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_client_key_unique UNIQUE (client_id, idempotency_key)
);

-- GET /v1/payments lists a client's payments newest first, paging with
-- starting_after: this index serves both the order and the cursor.
CREATE INDEX payments_client_created_idx ON payments (client_id, created_at DESC, id DESC);

-- +goose Down
DROP TABLE payments;
