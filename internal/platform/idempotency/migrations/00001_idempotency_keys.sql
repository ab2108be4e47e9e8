-- +goose Up
-- The durable record of each idempotency key: whatever happens to Redis, a
-- scope's key names at most one piece of work, which is driven by at most
-- one holder at a time, and answers every retry with one stored response.
CREATE TABLE idempotency_keys (
    scope            text        NOT NULL, -- whose key it is (a client)
    key              text        NOT NULL, -- the Idempotency-Key
    -- SHA-256 of the request the key was first used for: the same key for
    -- another request is refused.
    fingerprint      text        NOT NULL,
    kind             text        NOT NULL, -- what the work makes, for its reconciler
    resource_id      text        NOT NULL, -- the id of what it makes
    -- The lease: whoever holds lease_token until lease_expires_at drives
    -- the work; after that, anyone may take it over. Times are the
    -- database's (now()), so replicas with skewed clocks agree.
    lease_token      text,
    lease_expires_at timestamptz,
    -- When a holder last set out to do the work's side effect. Only long
    -- after it may the absence of that effect be taken as final.
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    -- When a reconciler last looked and had to leave the key pending: its
    -- scan takes those it never looked at first.
    checked_at       timestamptz,
    -- The final answer, replayed byte for byte. NULL while pending: an
    -- unknown outcome is not an answer to keep.
    response_status  int,
    response_header  jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (scope, key),
    CONSTRAINT idempotency_keys_response_whole
        CHECK ((response_status IS NULL) = (response_body IS NULL))
);

-- Reconcilers scan the pending keys of their kind.
CREATE INDEX idempotency_keys_pending_idx
    ON idempotency_keys (kind, checked_at NULLS FIRST, attempted_at)
    WHERE response_status IS NULL;

-- +goose Down
DROP TABLE idempotency_keys;
