package db

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound       = errors.New("payment not found")
	ErrCursorNotFound = errors.New("cursor payment not found")
)

// Payment statuses as stored. The payments package owns their meaning.
const (
	StatusProcessing = "processing"
	StatusSucceeded  = "succeeded"
	StatusFailed     = "failed"
)

// Payment is one row of the payments table.
type Payment struct {
	ID               string
	ClientID         string
	IdempotencyKey   string
	Fingerprint      string
	Amount           int64
	Currency         string
	Description      string
	Metadata         map[string]string
	Status           string
	ProviderChargeID string // empty until the provider answered
	FailureCode      string // empty unless failed
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Payments is the repository of payments. Reads that may be slightly stale
// go to the replica when one is configured; everything else goes to the
// primary.
type Payments struct {
	primary *sql.DB
	replica *sql.DB
}

// NewPayments returns a repository over primary, reading from replica when
// it is not nil.
func NewPayments(primary, replica *sql.DB) *Payments {
	if replica == nil {
		replica = primary
	}
	return &Payments{primary: primary, replica: replica}
}

const paymentColumns = `id, client_id, idempotency_key, request_fingerprint, amount, currency,
	description, metadata, status, coalesce(provider_charge_id, ''), coalesce(failure_code, ''),
	created_at, updated_at`

// Create inserts p in status processing unless the client has already used
// p.IdempotencyKey. It returns the row as stored — p itself, or the payment
// that already holds the key — and whether this call created it. The unique
// constraint makes this atomic: of many concurrent calls with one key,
// exactly one creates.
func (r *Payments) Create(ctx context.Context, p Payment) (Payment, bool, error) {
	metadata, err := json.Marshal(p.Metadata)
	if err != nil {
		return Payment{}, false, fmt.Errorf("encode metadata of payment %s: %w", p.ID, err)
	}
	row := r.primary.QueryRowContext(ctx, `
		INSERT INTO payments (id, client_id, idempotency_key, request_fingerprint, amount, currency, description, metadata, status)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (client_id, idempotency_key) DO NOTHING
		RETURNING `+paymentColumns,
		p.ID, p.ClientID, p.IdempotencyKey, p.Fingerprint, p.Amount, p.Currency, p.Description, metadata, StatusProcessing)
	created, err := scanPayment(row)
	if err == nil {
		return created, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return Payment{}, false, fmt.Errorf("insert payment for key %q: %w", p.IdempotencyKey, err)
	}
	existing, err := r.ByKey(ctx, p.ClientID, p.IdempotencyKey)
	if err != nil {
		return Payment{}, false, err
	}
	return existing, false, nil
}

// ByKey returns the client's payment for an idempotency key, from the
// primary: idempotency decisions must never read stale data.
func (r *Payments) ByKey(ctx context.Context, clientID, key string) (Payment, error) {
	row := r.primary.QueryRowContext(ctx, `SELECT `+paymentColumns+` FROM payments
		WHERE client_id = $1 AND idempotency_key = $2`, clientID, key)
	p, err := scanPayment(row)
	if err != nil {
		return Payment{}, fmt.Errorf("payment for key %q: %w", key, err)
	}
	return p, nil
}

// Get returns the client's payment by id. It reads the replica first and
// falls back to the primary when the replica fails or does not have the
// row yet: a client that just created a payment must be able to read it.
func (r *Payments) Get(ctx context.Context, clientID, id string) (Payment, error) {
	const q = `SELECT ` + paymentColumns + ` FROM payments WHERE client_id = $1 AND id = $2`
	p, err := scanPayment(r.replica.QueryRowContext(ctx, q, clientID, id))
	if err != nil && r.replica != r.primary {
		p, err = scanPayment(r.primary.QueryRowContext(ctx, q, clientID, id))
	}
	if err != nil {
		return Payment{}, fmt.Errorf("payment %s: %w", id, err)
	}
	return p, nil
}

// List returns up to limit of the client's payments, newest first, starting
// after the payment startingAfter (if not empty), and whether more follow.
// It reads the replica, falling back to the primary if the replica fails.
func (r *Payments) List(ctx context.Context, clientID string, limit int, startingAfter string) ([]Payment, bool, error) {
	payments, hasMore, err := r.list(ctx, r.replica, clientID, limit, startingAfter)
	if err != nil && r.replica != r.primary && !errors.Is(err, ErrCursorNotFound) {
		payments, hasMore, err = r.list(ctx, r.primary, clientID, limit, startingAfter)
	}
	return payments, hasMore, err
}

func (r *Payments) list(ctx context.Context, pool *sql.DB, clientID string, limit int, startingAfter string) ([]Payment, bool, error) {
	// Keyset pagination on (created_at, id): stable under concurrent
	// inserts, and served by payments_client_created_idx.
	query := `SELECT ` + paymentColumns + ` FROM payments WHERE client_id = $1`
	args := []any{clientID, limit + 1}
	if startingAfter != "" {
		var cursorTime time.Time
		err := pool.QueryRowContext(ctx, `SELECT created_at FROM payments WHERE client_id = $1 AND id = $2`,
			clientID, startingAfter).Scan(&cursorTime)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, false, fmt.Errorf("starting_after %s: %w", startingAfter, ErrCursorNotFound)
		}
		if err != nil {
			return nil, false, fmt.Errorf("read cursor %s: %w", startingAfter, err)
		}
		query += ` AND (created_at, id) < ($3, $4)`
		args = append(args, cursorTime, startingAfter)
	}
	rows, err := pool.QueryContext(ctx, query+` ORDER BY created_at DESC, id DESC LIMIT $2`, args...)
	if err != nil {
		return nil, false, fmt.Errorf("list payments: %w", err)
	}
	defer rows.Close()
	var payments []Payment
	for rows.Next() {
		p, err := scanPayment(rows)
		if err != nil {
			return nil, false, fmt.Errorf("list payments: %w", err)
		}
		payments = append(payments, p)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list payments: %w", err)
	}
	hasMore := len(payments) > limit
	if hasMore {
		payments = payments[:limit]
	}
	return payments, hasMore, nil
}

// Settlement is the final state of a payment.
type Settlement struct {
	Status           string // StatusSucceeded or StatusFailed
	ProviderChargeID string
	FailureCode      string
}

// Settle moves a processing payment to its final state and returns the row
// as it then is. Final states never change: if the payment was already
// settled (by a concurrent retry, say), Settle changes nothing and returns
// the stored row, whose outcome the provider's idempotency guarantees is
// the same.
func (r *Payments) Settle(ctx context.Context, id string, s Settlement) (Payment, error) {
	if s.Status != StatusSucceeded && s.Status != StatusFailed {
		return Payment{}, fmt.Errorf("settle payment %s: %q is not a final status", id, s.Status)
	}
	row := r.primary.QueryRowContext(ctx, `
		UPDATE payments
		SET status = $2, provider_charge_id = nullif($3, ''), failure_code = nullif($4, ''), updated_at = now()
		WHERE id = $1 AND status = 'processing'
		RETURNING `+paymentColumns,
		id, s.Status, s.ProviderChargeID, s.FailureCode)
	p, err := scanPayment(row)
	if errors.Is(err, ErrNotFound) {
		p, err = scanPayment(r.primary.QueryRowContext(ctx, `SELECT `+paymentColumns+` FROM payments WHERE id = $1`, id))
	}
	if err != nil {
		return Payment{}, fmt.Errorf("settle payment %s: %w", id, err)
	}
	return p, nil
}

// Abandon deletes a payment that is still processing. It is only for a
// payment whose provider call was never sent: nothing was charged, and
// deleting the row leaves the client's idempotency key usable again.
func (r *Payments) Abandon(ctx context.Context, id string) error {
	_, err := r.primary.ExecContext(ctx, `DELETE FROM payments WHERE id = $1 AND status = 'processing'`, id)
	if err != nil {
		return fmt.Errorf("abandon payment %s: %w", id, err)
	}
	return nil
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface{ Scan(dest ...any) error }

func scanPayment(s scanner) (Payment, error) {
	var (
		p        Payment
		metadata []byte
	)
	err := s.Scan(&p.ID, &p.ClientID, &p.IdempotencyKey, &p.Fingerprint, &p.Amount, &p.Currency,
		&p.Description, &metadata, &p.Status, &p.ProviderChargeID, &p.FailureCode, &p.CreatedAt, &p.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Payment{}, ErrNotFound
	}
	if err != nil {
		return Payment{}, err
	}
	if err := json.Unmarshal(metadata, &p.Metadata); err != nil {
		return Payment{}, fmt.Errorf("decode metadata of payment %s: %w", p.ID, err)
	}
	return p, nil
}
