// Package paymentsdb stores payments and refunds in Postgres: their
// tables, their migrations, and the statements that keep each made at most
// once. It implements payments.Store.
//
// A key's record (the platform's idempotency.Keys) is written in the same
// statement or transaction as the row its work makes or settles, so the
// two commit together: a new payment is one statement (its key claimed and
// its row inserted), and settling it one more. Refunds take a transaction
// each, as their amount is reserved on the payment under its row lock.
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

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations is the payments schema. It keeps goose's default version
// table, which it has used since its first migration; it needs
// idempotency.Migrations applied first.
var Migrations = postgres.Migrations{Files: mustSub(migrationFiles, "migrations"), Table: postgres.DefaultTable}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err) // dir is a constant embedded above
	}
	return sub
}

// Store is payments.Store on Postgres. Reads that may be slightly stale go
// where Reads says (a replica within its lag bound); everything else to
// the primary.
type Store struct {
	primary *sql.DB
	reads   Reads
	keys    *idempotency.Keys
}

var _ payments.Store = (*Store)(nil)

// Reads picks the pool for a read that may be stale: postgres.Topology,
// which sends it to the replica only while the replica's lag is within
// its bound.
type Reads interface{ ReadPool() *sql.DB }

// New returns a store over primary, sending reads that may be stale where
// reads says (nil: the primary), with keys' records in the same database.
func New(primary *sql.DB, reads Reads, keys *idempotency.Keys) *Store {
	return &Store{primary: primary, reads: reads, keys: keys}
}

// readPool is the pool for a read that may be stale.
func (s *Store) readPool() *sql.DB {
	if s.reads == nil {
		return s.primary
	}
	return s.reads.ReadPool()
}

const paymentColumns = `id, client_id, amount, currency, description, metadata, status,
	coalesce(provider_charge_id, ''), coalesce(failure_code, ''), amount_refunded, created_at, updated_at`

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface{ Scan(dest ...any) error }

func scanPayment(s scanner) (payments.Payment, error) {
	var (
		p        payments.Payment
		metadata []byte
	)
	err := s.Scan(&p.ID, &p.ClientID, &p.Amount, &p.Currency, &p.Description, &metadata, &p.Status,
		&p.ProviderChargeID, &p.FailureCode, &p.AmountRefunded, &p.CreatedAt, &p.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return payments.Payment{}, payments.ErrNotFound
	}
	if err != nil {
		return payments.Payment{}, err
	}
	if err := json.Unmarshal(metadata, &p.Metadata); err != nil {
		return payments.Payment{}, fmt.Errorf("decode metadata of payment %s: %w", p.ID, err)
	}
	return p, nil
}

// ClaimPayment claims req's key and inserts p, in one statement.
func (s *Store) ClaimPayment(ctx context.Context, req idempotency.Request, p payments.Payment) (payments.Claimed[payments.Payment], error) {
	metadata, err := json.Marshal(p.Metadata)
	if err != nil {
		return payments.Claimed[payments.Payment]{}, fmt.Errorf("encode metadata of payment %s: %w", p.ID, err)
	}
	c, replay, err := s.keys.Claim(ctx, s.primary, req, payments.KindPayment, p.ID, idempotency.Write{
		SQL: `INSERT INTO payments (id, client_id, amount, currency, description, metadata, status, created_at, updated_at)
			SELECT $1, $2, $3, $4, $5, $6, 'processing', created_at, created_at FROM claimed`,
		Args: []any{p.ID, p.ClientID, p.Amount, p.Currency, p.Description, string(metadata)},
	})
	out := payments.Claimed[payments.Payment]{Claim: c, Replay: replay}
	switch {
	case err != nil || replay != nil:
		return out, err
	case c.New:
		p.CreatedAt, p.UpdatedAt = c.At, c.At
		out.Resource = p
		return out, nil
	}
	// Resumed: the payment is the one the key made before.
	out.Resource, err = s.PaymentByID(ctx, c.ResourceID)
	return out, err
}

// SettlePayment records p's final state with resp, fenced by c.
func (s *Store) SettlePayment(ctx context.Context, c idempotency.Claim, p payments.Payment, resp idempotency.Response, idleFor time.Duration) (*idempotency.Response, error) {
	return s.keys.Complete(ctx, s.primary, c, resp, idleFor, idempotency.Write{
		SQL: `UPDATE payments
			SET status = $2, provider_charge_id = nullif($3, ''), failure_code = nullif($4, ''), updated_at = $5
			WHERE id = $1 AND status = 'processing' AND EXISTS (SELECT 1 FROM completed)`,
		Args: []any{p.ID, p.Status, p.ProviderChargeID, p.FailureCode, p.UpdatedAt},
	})
}

// ClaimRefund claims req's key for r and reserves r's amount on its
// payment, in one transaction: a refusal rolls both back.
func (s *Store) ClaimRefund(ctx context.Context, req idempotency.Request, r payments.Refund) (out payments.Claimed[payments.Refund], err error) {
	tx, err := s.primary.BeginTx(ctx, nil)
	if err != nil {
		return out, fmt.Errorf("claim refund: %w", err)
	}
	defer tx.Rollback() // a no-op after Commit
	c, replay, err := s.keys.Claim(ctx, tx, req, payments.KindRefund, r.ID, idempotency.Write{
		// Inserted only for a payment of the client's: otherwise nothing,
		// and the reservation below says why.
		SQL: `INSERT INTO refunds (id, payment_id, client_id, amount, reason, status, created_at, updated_at)
			SELECT $1, $2, $3, $4, $5, 'processing', created_at, created_at FROM claimed
			WHERE EXISTS (SELECT 1 FROM payments WHERE id = $2 AND client_id = $3)`,
		Args: []any{r.ID, r.PaymentID, r.ClientID, r.Amount, r.Reason},
	})
	out = payments.Claimed[payments.Refund]{Claim: c, Replay: replay}
	switch {
	case err != nil || replay != nil:
		return out, err
	case !c.New:
		// Resumed: the refund is the one the key made before.
		if out.Resource, err = refundByID(ctx, tx, c.ResourceID); err != nil {
			return out, err
		}
		return out, commit(tx, "claim refund")
	}
	// The reservation is the guard of "never more than was charged": it
	// is checked in the statement that makes it, under the payment's row
	// lock, so concurrent refunds of one payment queue here.
	err = tx.QueryRowContext(ctx, `
		UPDATE payments SET amount_refund_pending = amount_refund_pending + $3
		WHERE id = $1 AND client_id = $2 AND status = 'succeeded'
		  AND amount_refunded + amount_refund_pending + $3 <= amount
		RETURNING provider_charge_id`, r.PaymentID, r.ClientID, r.Amount).Scan(&r.ChargeID)
	if errors.Is(err, sql.ErrNoRows) {
		return out, s.refusal(ctx, tx, r)
	}
	if err != nil {
		return out, fmt.Errorf("reserve refund of payment %s: %w", r.PaymentID, err)
	}
	r.CreatedAt, r.UpdatedAt = c.At, c.At
	out.Resource = r
	return out, commit(tx, "claim refund")
}

// refusal says why a refund could not be reserved, from the payment as
// the refund's transaction sees it.
func (s *Store) refusal(ctx context.Context, tx *sql.Tx, r payments.Refund) error {
	var (
		status string
		left   int64
	)
	err := tx.QueryRowContext(ctx, `
		SELECT status, amount - amount_refunded - amount_refund_pending FROM payments
		WHERE id = $1 AND client_id = $2`, r.PaymentID, r.ClientID).Scan(&status, &left)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("payment %s: %w", r.PaymentID, payments.ErrNotFound)
	case err != nil:
		return fmt.Errorf("refund of payment %s: %w", r.PaymentID, err)
	case status != string(payments.StatusSucceeded):
		return fmt.Errorf("payment %s is %s: %w", r.PaymentID, status, payments.ErrNotRefundable)
	}
	return &payments.RefundTooLargeError{Requested: r.Amount, Left: left}
}

// SettleRefund records r's final state with resp, fenced by c, and moves
// its amount from reserved to refunded (or frees it), in one transaction.
func (s *Store) SettleRefund(ctx context.Context, c idempotency.Claim, r payments.Refund, resp idempotency.Response, idleFor time.Duration) (*idempotency.Response, error) {
	tx, err := s.primary.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("settle refund %s: %w", r.ID, err)
	}
	defer tx.Rollback()
	stored, err := s.keys.Complete(ctx, tx, c, resp, idleFor, idempotency.Write{
		SQL: `UPDATE refunds
			SET status = $2, provider_refund_id = nullif($3, ''), failure_code = nullif($4, ''), updated_at = $5
			WHERE id = $1 AND status = 'processing' AND EXISTS (SELECT 1 FROM completed)`,
		Args: []any{r.ID, r.Status, r.ProviderRefundID, r.FailureCode, r.UpdatedAt},
	})
	if err != nil || stored != nil {
		return stored, err
	}
	refunded := int64(0)
	if r.Status == payments.StatusSucceeded {
		refunded = r.Amount
	}
	if _, err := tx.ExecContext(ctx, `
		UPDATE payments
		SET amount_refund_pending = amount_refund_pending - $2, amount_refunded = amount_refunded + $3, updated_at = $4
		WHERE id = $1`, r.PaymentID, r.Amount, refunded, r.UpdatedAt); err != nil {
		return nil, fmt.Errorf("settle refund %s: %w", r.ID, err)
	}
	return nil, commit(tx, "settle refund "+r.ID)
}

// HasKey reports whether req's key has a record.
func (s *Store) HasKey(ctx context.Context, req idempotency.Request) (bool, error) {
	return s.keys.Exists(ctx, s.primary, req)
}

// Release gives c's lease up.
func (s *Store) Release(ctx context.Context, c idempotency.Claim, checked bool) error {
	return s.keys.Release(ctx, s.primary, c, checked)
}

// Abandon deletes c's key and the resource it created: a payment in the
// key's statement; a refund in a transaction that frees its reservation.
func (s *Store) Abandon(ctx context.Context, c idempotency.Claim) error {
	if c.Kind == payments.KindPayment {
		return s.keys.Abandon(ctx, s.primary, c, idempotency.Write{
			SQL: `DELETE FROM payments WHERE id IN (SELECT resource_id FROM abandoned) AND status = 'processing'`,
		})
	}
	tx, err := s.primary.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("abandon refund %s: %w", c.ResourceID, err)
	}
	defer tx.Rollback()
	r, err := refundByID(ctx, tx, c.ResourceID)
	if errors.Is(err, payments.ErrNotFound) {
		return fmt.Errorf("abandon refund %s: %w", c.ResourceID, idempotency.ErrLeaseLost)
	}
	if err != nil {
		return err
	}
	err = s.keys.Abandon(ctx, tx, c, idempotency.Write{
		SQL: `DELETE FROM refunds WHERE id IN (SELECT resource_id FROM abandoned) AND status = 'processing'`,
	})
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE payments SET amount_refund_pending = amount_refund_pending - $2 WHERE id = $1`,
		r.PaymentID, r.Amount); err != nil {
		return fmt.Errorf("abandon refund %s: %w", r.ID, err)
	}
	return commit(tx, "abandon refund "+r.ID)
}

// Unclaim undoes a claim whose answer was lost, as idempotency.Keys.Unclaim
// does: abandon if the claim would have created the key, release if it
// would have taken an existing one over (whose resource an earlier holder
// may have sent to the provider); fenced by the claim's token.
func (s *Store) Unclaim(ctx context.Context, c idempotency.Claim) error {
	var err error
	if c.New {
		err = s.Abandon(ctx, c)
	} else {
		err = s.keys.Release(ctx, s.primary, c, false)
	}
	if errors.Is(err, idempotency.ErrLeaseLost) {
		return nil
	}
	return err
}

// Stale lists pending keys of kind for the reconciler.
func (s *Store) Stale(ctx context.Context, kind string, age time.Duration, limit int) ([]idempotency.Claim, error) {
	return s.keys.Stale(ctx, s.primary, kind, age, limit)
}

// Take takes a stale key's lease for the reconciler.
func (s *Store) Take(ctx context.Context, c *idempotency.Claim) error {
	return s.keys.Take(ctx, s.primary, c)
}

// Backlog counts kind's pending keys and ages their oldest attempt.
func (s *Store) Backlog(ctx context.Context, kind string) (pending int, oldest time.Duration, err error) {
	return s.keys.Backlog(ctx, s.primary, kind)
}

// Payment returns the client's payment by id. It reads the replica first
// and falls back to the primary when the replica fails or does not have
// the row yet: a client that just created a payment must be able to read
// it.
func (s *Store) Payment(ctx context.Context, clientID, id string) (payments.Payment, error) {
	const q = `SELECT ` + paymentColumns + ` FROM payments WHERE client_id = $1 AND id = $2`
	pool := s.readPool()
	p, err := scanPayment(pool.QueryRowContext(ctx, q, clientID, id))
	if err != nil && pool != s.primary {
		p, err = scanPayment(s.primary.QueryRowContext(ctx, q, clientID, id))
	}
	if err != nil {
		return payments.Payment{}, fmt.Errorf("payment %s: %w", id, err)
	}
	return p, nil
}

// PaymentByID returns a payment from the primary, whoever's it is.
func (s *Store) PaymentByID(ctx context.Context, id string) (payments.Payment, error) {
	p, err := scanPayment(s.primary.QueryRowContext(ctx, `SELECT `+paymentColumns+` FROM payments WHERE id = $1`, id))
	if err != nil {
		return payments.Payment{}, fmt.Errorf("payment %s: %w", id, err)
	}
	return p, nil
}

// Payments returns up to limit of the client's payments, newest first,
// starting after the payment startingAfter (if not empty), and whether
// more follow. It reads the replica, falling back to the primary if the
// replica fails or lacks the cursor: a client paging from a payment it
// just created must not be told its cursor does not exist because the
// replica lags.
func (s *Store) Payments(ctx context.Context, clientID string, limit int, startingAfter string) ([]payments.Payment, bool, error) {
	pool := s.readPool()
	page, hasMore, err := s.payments(ctx, pool, clientID, limit, startingAfter)
	if err != nil && pool != s.primary {
		page, hasMore, err = s.payments(ctx, s.primary, clientID, limit, startingAfter)
	}
	return page, hasMore, err
}

func (s *Store) payments(ctx context.Context, pool *sql.DB, clientID string, limit int, startingAfter string) ([]payments.Payment, bool, error) {
	// Keyset pagination on (created_at, id): stable under concurrent
	// inserts, and served by payments_client_created_idx.
	query := `SELECT ` + paymentColumns + ` FROM payments WHERE client_id = $1`
	args := []any{clientID, limit + 1}
	if startingAfter != "" {
		var cursorTime time.Time
		err := pool.QueryRowContext(ctx, `SELECT created_at FROM payments WHERE client_id = $1 AND id = $2`,
			clientID, startingAfter).Scan(&cursorTime)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, false, fmt.Errorf("starting_after %s: %w", startingAfter, payments.ErrBadCursor)
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
	var page []payments.Payment
	for rows.Next() {
		p, err := scanPayment(rows)
		if err != nil {
			return nil, false, fmt.Errorf("list payments: %w", err)
		}
		page = append(page, p)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list payments: %w", err)
	}
	hasMore := len(page) > limit
	if hasMore {
		page = page[:limit]
	}
	return page, hasMore, nil
}

const refundColumns = `r.id, r.payment_id, r.client_id, r.amount, r.status, r.reason,
	coalesce(p.provider_charge_id, ''), coalesce(r.provider_refund_id, ''), coalesce(r.failure_code, ''),
	r.created_at, r.updated_at`

func scanRefund(s scanner) (payments.Refund, error) {
	var r payments.Refund
	err := s.Scan(&r.ID, &r.PaymentID, &r.ClientID, &r.Amount, &r.Status, &r.Reason,
		&r.ChargeID, &r.ProviderRefundID, &r.FailureCode, &r.CreatedAt, &r.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return payments.Refund{}, payments.ErrNotFound
	}
	return r, err
}

// RefundByID returns a refund from the primary, whoever's it is.
func (s *Store) RefundByID(ctx context.Context, id string) (payments.Refund, error) {
	return refundByID(ctx, s.primary, id)
}

func refundByID(ctx context.Context, q idempotency.Querier, id string) (payments.Refund, error) {
	r, err := scanRefund(q.QueryRowContext(ctx, `SELECT `+refundColumns+`
		FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1`, id))
	if err != nil {
		return payments.Refund{}, fmt.Errorf("refund %s: %w", id, err)
	}
	return r, nil
}

// Refunds lists the refunds of the client's payment, newest first, from
// the replica, or the primary when the replica lacks the payment.
func (s *Store) Refunds(ctx context.Context, clientID, paymentID string) ([]payments.Refund, error) {
	pool := s.readPool()
	refunds, err := s.refunds(ctx, pool, clientID, paymentID)
	if err != nil && pool != s.primary {
		refunds, err = s.refunds(ctx, s.primary, clientID, paymentID)
	}
	return refunds, err
}

func (s *Store) refunds(ctx context.Context, pool *sql.DB, clientID, paymentID string) ([]payments.Refund, error) {
	var exists bool
	if err := pool.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM payments WHERE id = $1 AND client_id = $2)`,
		paymentID, clientID).Scan(&exists); err != nil {
		return nil, fmt.Errorf("refunds of payment %s: %w", paymentID, err)
	}
	if !exists {
		return nil, fmt.Errorf("payment %s: %w", paymentID, payments.ErrNotFound)
	}
	rows, err := pool.QueryContext(ctx, `SELECT `+refundColumns+`
		FROM refunds r JOIN payments p ON p.id = r.payment_id
		WHERE r.payment_id = $1 ORDER BY r.created_at DESC, r.id DESC`, paymentID)
	if err != nil {
		return nil, fmt.Errorf("refunds of payment %s: %w", paymentID, err)
	}
	defer rows.Close()
	refunds := []payments.Refund{}
	for rows.Next() {
		r, err := scanRefund(rows)
		if err != nil {
			return nil, fmt.Errorf("refunds of payment %s: %w", paymentID, err)
		}
		refunds = append(refunds, r)
	}
	return refunds, rows.Err()
}

// Leader returns a contender for the advisory lock key on the primary.
func (s *Store) Leader(key int64) *postgres.Leader { return postgres.NewLeader(s.primary, key) }

func commit(tx *sql.Tx, what string) error {
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
