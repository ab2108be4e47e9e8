package payments

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// Errors the store returns, which the service and the API branch on.
var (
	ErrNotFound       = errors.New("not found")
	ErrBadCursor      = errors.New("starting_after names no payment of this client")
	ErrNotRefundable  = errors.New("the payment cannot be refunded: it has not succeeded")
	ErrRefundTooLarge = errors.New("the refund is larger than what is left to refund")
)

// RefundTooLargeError is ErrRefundTooLarge with the amounts.
type RefundTooLargeError struct{ Requested, Left int64 }

func (e *RefundTooLargeError) Error() string {
	return fmt.Sprintf("refund of %d is larger than the %d left to refund", e.Requested, e.Left)
}

// Is makes errors.Is(err, ErrRefundTooLarge) true.
func (e *RefundTooLargeError) Is(target error) bool { return target == ErrRefundTooLarge }

// Kinds of idempotent work, as the key records name them: each has its
// own reconciliation.
const (
	KindPayment = "payment"
	KindRefund  = "refund"
)

// Store is what the domain needs of storage. paymentsdb implements it on
// Postgres; every write it does for a claimed key is fenced by the claim's
// lease, in the statement that writes.
type Store interface {
	// ClaimPayment claims req's key for p: it inserts p with the key
	// (Claimed.New), or resumes the payment a previous holder left
	// pending (its row in Resource), or returns the key's stored answer
	// (Replay). Otherwise idempotency.ErrInFlight or ErrKeyReused.
	ClaimPayment(ctx context.Context, req idempotency.Request, p Payment) (Claimed[Payment], error)
	// SettlePayment records p's final state and resp as the key's answer,
	// fenced by c (see idempotency.Keys.Complete, and idleFor there). It
	// returns the answer stored already if another holder settled it.
	SettlePayment(ctx context.Context, c idempotency.Claim, p Payment, resp idempotency.Response, idleFor time.Duration) (*idempotency.Response, error)

	// ClaimRefund claims req's key for r and, for a new key, reserves r's
	// amount on its payment under the payment's row lock: ErrNotFound,
	// ErrNotRefundable or ErrRefundTooLarge refuse it, and store nothing.
	ClaimRefund(ctx context.Context, req idempotency.Request, r Refund) (Claimed[Refund], error)
	// SettleRefund records r's final state, moves its amount from
	// reserved to refunded (or frees it, if it failed), and stores resp
	// as the key's answer, fenced by c.
	SettleRefund(ctx context.Context, c idempotency.Claim, r Refund, resp idempotency.Response, idleFor time.Duration) (*idempotency.Response, error)

	// HasKey reports whether req's key has a record.
	HasKey(ctx context.Context, req idempotency.Request) (bool, error)
	// Release gives c's lease up, the work still pending; checked, by a
	// reconciler, sends it to the back of the next scans.
	Release(ctx context.Context, c idempotency.Claim, checked bool) error
	// Abandon deletes c's key and the resource it created (freeing a
	// refund's reservation): for work whose side effect never started.
	Abandon(ctx context.Context, c idempotency.Claim) error
	// Unclaim undoes a claim whose answer was lost (idempotency.Keys.Unclaim).
	Unclaim(ctx context.Context, c idempotency.Claim) error
	// Stale lists pending keys of kind for the reconciler, unclaimed.
	Stale(ctx context.Context, kind string, age time.Duration, limit int) ([]idempotency.Claim, error)
	// Take takes a stale key's lease for the reconciler.
	Take(ctx context.Context, c *idempotency.Claim) error
	// Backlog counts the pending keys of kind, stale or not, and says how
	// long ago the oldest attempt among them was made (0 if none).
	Backlog(ctx context.Context, kind string) (pending int, oldest time.Duration, err error)

	// Payment returns the client's payment; ErrNotFound if none.
	Payment(ctx context.Context, clientID, id string) (Payment, error)
	// PaymentByID returns a payment whoever's it is: for the reconciler.
	PaymentByID(ctx context.Context, id string) (Payment, error)
	// Payments pages the client's payments, newest first, after the
	// payment startingAfter (ErrBadCursor if it names none of theirs).
	Payments(ctx context.Context, clientID string, limit int, startingAfter string) ([]Payment, bool, error)
	// RefundByID returns a refund whoever's it is: for the reconciler
	// and a resumed claim.
	RefundByID(ctx context.Context, id string) (Refund, error)
	// Refunds lists the refunds of the client's payment, newest first;
	// ErrNotFound if the payment is not theirs.
	Refunds(ctx context.Context, clientID, paymentID string) ([]Refund, error)

	// Leader returns a contender for a singleton job's leadership.
	Leader(key int64) *postgres.Leader
}

// Claimed is the outcome of a claim: the claim and its resource, or the
// stored answer of a key whose work is complete.
type Claimed[T any] struct {
	Claim    idempotency.Claim
	Resource T
	Replay   *idempotency.Response
}
