// Package paymentsdb stores payments in Postgres: the payments table, its
// migrations, and the statements that keep a payment charged at most once.
package paymentsdb

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations is the payments schema. It keeps goose's default version
// table, which it has used since its first migration.
var Migrations = postgres.Migrations{Files: mustSub(migrationFiles, "migrations"), Table: postgres.DefaultTable}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err) // dir is a constant embedded above
	}
	return sub
}

// Sentinel errors callers branch on.
var (
	ErrNotFound       = errors.New("payment not found")
	ErrCursorNotFound = errors.New("cursor payment not found")
	// ErrLeaseLost: the lease named by a token has expired and been taken
	// over; the payment is someone else's to drive now.
	ErrLeaseLost = errors.New("payment lease lost")
	// ErrAttemptTooRecent: a settlement that rests on the provider having
	// no charge was refused, because a charge was attempted too recently
	// for that absence to be final.
	ErrAttemptTooRecent = errors.New("charge attempted too recently")
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

	ResponseStatus int    // the stored final response; 0 while processing
	ResponseBody   []byte // (or for payments settled before migration 2)
	LeaseActive    bool   // someone holds an unexpired lease on it
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
	created_at, updated_at, coalesce(response_status, 0), response_body,
	coalesce(lease_expires_at > now(), false)`

// Claim is the outcome of Payments.Claim.
type Claim struct {
	Payment Payment
	// Owned: the caller holds the payment's lease and must drive it: call
	// the provider, then settle, release or abandon it.
	Owned bool
	// Created: the caller inserted the payment (it is Owned too).
	Created bool
}

// Claim takes an idempotency key for a request, atomically, in one of
// three ways:
//
//   - the key is new: p is inserted, processing, under a lease for token;
//   - the key names a processing payment of the same request whose lease
//     has expired (its driver gave up or died): the lease is taken over,
//     and the caller resumes it;
//   - otherwise the payment is returned as it is, not owned, for the
//     caller to replay, or refuse as in flight or as a reused key.
//
// Of any number of concurrent claims on one key, at most one owns it.
func (r *Payments) Claim(ctx context.Context, p Payment, token string, lease time.Duration) (Claim, error) {
	metadata, err := json.Marshal(p.Metadata)
	if err != nil {
		return Claim{}, fmt.Errorf("encode metadata of payment %s: %w", p.ID, err)
	}
	// A payment abandoned between our statements frees its key: try again.
	for range 3 {
		created, err := scanPayment(r.primary.QueryRowContext(ctx, `
			INSERT INTO payments (id, client_id, idempotency_key, request_fingerprint, amount, currency,
				description, metadata, status, lease_token, lease_expires_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'processing', $9, now() + $10 * interval '1 millisecond')
			ON CONFLICT (client_id, idempotency_key) DO NOTHING
			RETURNING `+paymentColumns,
			p.ID, p.ClientID, p.IdempotencyKey, p.Fingerprint, p.Amount, p.Currency, p.Description, metadata,
			token, lease.Milliseconds()))
		if err == nil {
			return Claim{Payment: created, Owned: true, Created: true}, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Claim{}, fmt.Errorf("insert payment for key %q: %w", p.IdempotencyKey, err)
		}

		resumed, err := scanPayment(r.primary.QueryRowContext(ctx, `
			UPDATE payments
			SET lease_token = $4, lease_expires_at = now() + $5 * interval '1 millisecond', updated_at = now()
			WHERE client_id = $1 AND idempotency_key = $2 AND request_fingerprint = $3
			  AND status = 'processing' AND (lease_expires_at IS NULL OR lease_expires_at <= now())
			RETURNING `+paymentColumns,
			p.ClientID, p.IdempotencyKey, p.Fingerprint, token, lease.Milliseconds()))
		if err == nil {
			return Claim{Payment: resumed, Owned: true}, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return Claim{}, fmt.Errorf("take over payment for key %q: %w", p.IdempotencyKey, err)
		}

		existing, err := r.ByKey(ctx, p.ClientID, p.IdempotencyKey)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return Claim{}, err
		}
		return Claim{Payment: existing}, nil
	}
	return Claim{}, fmt.Errorf("claim key %q: the payment kept disappearing", p.IdempotencyKey)
}

// Unclaim undoes a Claim whose outcome the caller did not learn (its
// answer was lost, or its context ended after the statement ran): it
// deletes p if the caller's insert committed, and releases the lease if
// the caller's takeover did. Both are fenced by the token, so otherwise it
// changes nothing. It is safe only because nothing was sent to the
// provider under this token.
func (r *Payments) Unclaim(ctx context.Context, p Payment, token string) error {
	if _, err := r.primary.ExecContext(ctx,
		`DELETE FROM payments WHERE id = $1 AND lease_token = $2 AND status = 'processing'`, p.ID, token); err != nil {
		return fmt.Errorf("unclaim payment %s: %w", p.ID, err)
	}
	if _, err := r.primary.ExecContext(ctx, `
		UPDATE payments SET lease_token = NULL, lease_expires_at = NULL
		WHERE client_id = $1 AND idempotency_key = $2 AND lease_token = $3`, p.ClientID, p.IdempotencyKey, token); err != nil {
		return fmt.Errorf("unclaim key %q: %w", p.IdempotencyKey, err)
	}
	return nil
}

// StartCharge is called by the lease holder just before it calls the
// provider: it renews the lease for the call and records the attempt, so
// the reconciler knows a charge may be in flight. It returns ErrLeaseLost
// if the lease has been taken over: then the caller must not call the
// provider, since another request is driving the payment.
func (r *Payments) StartCharge(ctx context.Context, id, token string, lease time.Duration) error {
	return r.fenced(ctx, "start charge of", id, `
		UPDATE payments
		SET lease_expires_at = now() + $3 * interval '1 millisecond', charge_attempted_at = now(), updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND status = 'processing'`, id, token, lease.Milliseconds())
}

// TakeLease takes the lease of a processing payment whose lease has
// expired, without marking a charge attempt: for the reconciler, which
// only looks the charge up.
func (r *Payments) TakeLease(ctx context.Context, id, token string, lease time.Duration) error {
	return r.fenced(ctx, "take lease of", id, `
		UPDATE payments
		SET lease_token = $2, lease_expires_at = now() + $3 * interval '1 millisecond'
		WHERE id = $1 AND status = 'processing' AND (lease_expires_at IS NULL OR lease_expires_at <= now())`,
		id, token, lease.Milliseconds())
}

// ReleaseLease gives up the lease of a payment left processing (its
// outcome is unknown), so that a retry or the reconciler can take it at
// once instead of waiting for it to expire.
func (r *Payments) ReleaseLease(ctx context.Context, id, token string) error {
	return r.fenced(ctx, "release lease of", id, `
		UPDATE payments SET lease_token = NULL, lease_expires_at = NULL
		WHERE id = $1 AND lease_token = $2`, id, token)
}

// Defer is the reconciler's ReleaseLease for a payment it could not settle
// yet: it also records the attempt, which sends the payment to the back of
// Stale's queue, so payments that cannot be settled now never crowd out
// those that can.
func (r *Payments) Defer(ctx context.Context, id, token string) error {
	return r.fenced(ctx, "defer", id, `
		UPDATE payments SET lease_token = NULL, lease_expires_at = NULL, reconciled_at = now()
		WHERE id = $1 AND lease_token = $2`, id, token)
}

// fenced runs a statement that must change the payment held under a lease,
// and returns ErrLeaseLost if it changed nothing.
func (r *Payments) fenced(ctx context.Context, what, id, query string, args ...any) error {
	res, err := r.primary.ExecContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("%s payment %s: %w", what, id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("%s payment %s: %w", what, id, err)
	} else if n == 0 {
		return fmt.Errorf("%s payment %s: %w", what, id, ErrLeaseLost)
	}
	return nil
}

// Stale returns up to limit processing payments that nobody holds and
// whose last charge attempt is older than age: those the reconciler never
// looked at first, oldest attempt first, then those it deferred longest
// ago.
func (r *Payments) Stale(ctx context.Context, age time.Duration, limit int) ([]Payment, error) {
	rows, err := r.primary.QueryContext(ctx, `SELECT `+paymentColumns+` FROM payments
		WHERE status = 'processing' AND charge_attempted_at < now() - $1 * interval '1 millisecond'
		  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
		ORDER BY reconciled_at NULLS FIRST, charge_attempted_at
		LIMIT $2`, age.Milliseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("list stale payments: %w", err)
	}
	defer rows.Close()
	var payments []Payment
	for rows.Next() {
		p, err := scanPayment(rows)
		if err != nil {
			return nil, fmt.Errorf("list stale payments: %w", err)
		}
		payments = append(payments, p)
	}
	return payments, rows.Err()
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
// It reads the replica, falling back to the primary if the replica fails or
// lacks the cursor: a client paging from a payment it just created must not
// be told its cursor does not exist because the replica lags.
func (r *Payments) List(ctx context.Context, clientID string, limit int, startingAfter string) ([]Payment, bool, error) {
	payments, hasMore, err := r.list(ctx, r.replica, clientID, limit, startingAfter)
	if err != nil && r.replica != r.primary {
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
	// UnchargedFor, when set, makes the settlement conditional on the
	// payment's last charge attempt being at least this old, by the
	// database's clock, checked under the row lock. It is for a verdict
	// that rests on an absence (the provider has no charge): only time
	// makes that final, and a charge attempted since would void it.
	UnchargedFor time.Duration
}

// Respond renders the response a settled payment's key answers with.
type Respond func(settled Payment) (status int, body []byte, err error)

// Settle moves a processing payment to its final state, stores the
// response respond renders for it, and releases its lease, in one
// transaction. It returns the row as it then is, and whether this call
// settled it.
//
// Settle is fenced: it changes the payment only while token holds its
// lease (ErrLeaseLost otherwise), checked under the row lock, so a holder
// whose lease was taken over cannot settle what the new holder is driving.
// Final states never change: if the payment was settled already (by a
// concurrent retry, say), Settle changes nothing and returns the stored
// row, whose outcome the provider's idempotency key guarantees is the same.
func (r *Payments) Settle(ctx context.Context, id, token string, s Settlement, respond Respond) (Payment, bool, error) {
	if s.Status != StatusSucceeded && s.Status != StatusFailed {
		return Payment{}, false, fmt.Errorf("settle payment %s: %q is not a final status", id, s.Status)
	}
	tx, err := r.primary.BeginTx(ctx, nil)
	if err != nil {
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, err)
	}
	defer tx.Rollback() // a no-op after Commit

	// now() is the transaction's start time, the same in both statements:
	// the response rendered here shows exactly the updated_at stored.
	var (
		now       time.Time
		row       Payment
		holder    bool
		uncharged bool
	)
	err = scanRow(tx.QueryRowContext(ctx, `SELECT `+paymentColumns+`, now(),
			coalesce(lease_token = $2, false),
			charge_attempted_at <= now() - $3 * interval '1 millisecond'
		FROM payments WHERE id = $1 FOR UPDATE`, id, token, s.UnchargedFor.Milliseconds()),
		&row, &now, &holder, &uncharged)
	switch {
	case err != nil:
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, err)
	case row.Status != StatusProcessing:
		return row, false, nil
	case !holder:
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, ErrLeaseLost)
	case s.UnchargedFor > 0 && !uncharged:
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, ErrAttemptTooRecent)
	}
	row.Status, row.ProviderChargeID, row.FailureCode, row.UpdatedAt = s.Status, s.ProviderChargeID, s.FailureCode, now
	row.ResponseStatus, row.ResponseBody, err = respond(row)
	if err != nil {
		return Payment{}, false, fmt.Errorf("settle payment %s: render response: %w", id, err)
	}
	_, err = tx.ExecContext(ctx, `
		UPDATE payments
		SET status = $2, provider_charge_id = nullif($3, ''), failure_code = nullif($4, ''),
		    response_status = $5, response_body = $6,
		    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
		WHERE id = $1`,
		id, s.Status, s.ProviderChargeID, s.FailureCode, row.ResponseStatus, row.ResponseBody)
	if err != nil {
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return Payment{}, false, fmt.Errorf("settle payment %s: %w", id, err)
	}
	row.LeaseActive = false
	return row, true, nil
}

// Abandon deletes a processing payment the caller created and holds, whose
// provider call was never sent: nothing was charged, and deleting the row
// leaves the client's idempotency key usable again. If the lease was taken
// over, another request is driving the payment and Abandon returns
// ErrLeaseLost, deleting nothing.
func (r *Payments) Abandon(ctx context.Context, id, token string) error {
	return r.fenced(ctx, "abandon", id,
		`DELETE FROM payments WHERE id = $1 AND lease_token = $2 AND status = 'processing'`, id, token)
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface{ Scan(dest ...any) error }

func scanPayment(s scanner) (Payment, error) {
	var p Payment
	err := scanRow(s, &p)
	return p, err
}

// scanRow scans paymentColumns into p, then any extra columns into extra.
func scanRow(s scanner, p *Payment, extra ...any) error {
	var metadata []byte
	dest := append([]any{&p.ID, &p.ClientID, &p.IdempotencyKey, &p.Fingerprint, &p.Amount, &p.Currency,
		&p.Description, &metadata, &p.Status, &p.ProviderChargeID, &p.FailureCode, &p.CreatedAt, &p.UpdatedAt,
		&p.ResponseStatus, &p.ResponseBody, &p.LeaseActive}, extra...)
	err := s.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(metadata, &p.Metadata); err != nil {
		return fmt.Errorf("decode metadata of payment %s: %w", p.ID, err)
	}
	return nil
}

// Leader returns a contender for the advisory lock key on the primary.
func (r *Payments) Leader(key int64) *postgres.Leader { return postgres.NewLeader(r.primary, key) }
