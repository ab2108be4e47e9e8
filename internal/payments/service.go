package payments

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// ErrUnavailable: a dependency is unavailable; the request may be retried
// with the same key.
var ErrUnavailable = errors.New("a dependency is unavailable")

// Provider is what the service needs of the payment provider. The plain
// HTTP client satisfies it, and so does the same client wrapped in its
// protections: the service cannot tell, and should not.
type Provider interface {
	Charge(ctx context.Context, req provider.ChargeRequest) (provider.Charge, error)
	FindCharge(ctx context.Context, idempotencyKey string) (provider.Charge, bool, error)
	Refund(ctx context.Context, req provider.RefundRequest) (provider.Refund, error)
	FindRefund(ctx context.Context, idempotencyKey string) (provider.Refund, bool, error)
}

// Admitter is implemented by a Provider that can tell, without calling
// anything, that it would refuse a call now (its bulkhead is full, its
// breaker open).
type Admitter interface{ Admit() error }

// Views render the answers to payment and refund requests, as the API
// shows them: the service stores the final ones with their keys, in the
// statement that settles them, so a replay is the first answer's bytes.
// requestID names the request (or reconciler run) that settled it.
type Views interface {
	Payment(p Payment, requestID string) (idempotency.Response, error)
	Refund(r Refund, requestID string) (idempotency.Response, error)
}

// Config wires a Service.
type Config struct {
	Store    Store
	Provider Provider
	Views    Views
	// Lease is the store's lease on a key: what a reconciler's step must
	// stay within.
	Lease time.Duration
	// SettleTimeout is the budget of the writes that record the provider's
	// answer. The provider call ends this long before the request's
	// deadline, and the writes get this long of their own, whatever the
	// deadline or the client does: an answer received is never dropped.
	SettleTimeout time.Duration
	Log           *slog.Logger
}

// Service creates, reads and lists payments and refunds.
type Service struct {
	Config
	newID func(prefix string) string
}

// NewService returns a service.
func NewService(cfg Config) *Service {
	return &Service{Config: cfg, newID: newID}
}

// Create validates the request, records the payment with its key and
// charges it once, and returns the answer: 201 charged, 402 declined (both
// final, stored with the key), 202 with the outcome unknown. A key that
// names a complete payment answers with its stored response.
//
// req's key is claimed in the statement that inserts the payment. A
// payment whose holder gave up or died, its lease expired, is taken over
// and charged again with the same provider key: it can only meet the
// original charge.
func (s *Service) Create(ctx context.Context, req idempotency.Request, body CreateRequest, requestID string) (idempotency.Response, error) {
	if err := body.Validate(); err != nil {
		return idempotency.Response{}, err
	}
	if err := s.shed(ctx, req); err != nil {
		return idempotency.Response{}, err
	}
	// From here on the work must not stop halfway because the client hung
	// up: it runs to its end or to the request's deadline.
	work, cancel := detach(ctx)
	defer cancel()
	claimed, err := s.Store.ClaimPayment(work, req, Payment{
		ID:          s.newID("pay_"),
		ClientID:    req.Scope,
		Amount:      body.Amount,
		Currency:    body.Currency,
		Status:      StatusProcessing,
		Description: body.Description,
		Metadata:    body.Metadata,
	})
	if err != nil {
		return idempotency.Response{}, s.claimFailed(ctx, claimed.Claim, err)
	}
	if claimed.Replay != nil {
		return *claimed.Replay, nil
	}
	return s.charge(work, claimed.Claim, claimed.Resource, requestID)
}

// Refund validates the request, records the refund with its key (its
// amount reserved on the payment, which must have succeeded and have that
// much left), refunds it once through the provider, and returns the
// answer: 201 refunded, 422 refused by the provider (both final), 202 with
// the outcome unknown.
func (s *Service) Refund(ctx context.Context, req idempotency.Request, paymentID string, body RefundRequest, requestID string) (idempotency.Response, error) {
	if err := body.Validate(); err != nil {
		return idempotency.Response{}, err
	}
	if !storable(paymentID) {
		return idempotency.Response{}, ErrNotFound // no such id can exist; asking would fail
	}
	if err := s.shed(ctx, req); err != nil {
		return idempotency.Response{}, err
	}
	work, cancel := detach(ctx)
	defer cancel()
	claimed, err := s.Store.ClaimRefund(work, req, Refund{
		ID:        s.newID("re_"),
		PaymentID: paymentID,
		ClientID:  req.Scope,
		Amount:    body.Amount,
		Status:    StatusProcessing,
		Reason:    body.Reason,
	})
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotRefundable), errors.Is(err, ErrRefundTooLarge):
		return idempotency.Response{}, err // refused, nothing stored
	case err != nil:
		return idempotency.Response{}, s.claimFailed(ctx, claimed.Claim, err)
	case claimed.Replay != nil:
		return *claimed.Replay, nil
	}
	return s.refund(work, claimed.Claim, claimed.Resource, requestID)
}

// claimFailed answers a failed claim. The claim may have committed and
// only its answer been lost: then it is undone, or the key would stay
// blocked behind a lease nobody uses. Nothing was sent under it, so
// undoing is safe.
//
// A claim that failed because the primary went away (a failover) is not
// retried here: the answer is a 503, and the client's retry with the same
// key is the retry, safe by design (it claims the key afresh, or meets
// the record this attempt left). What is retried in-process is the
// settle (see charge): the provider has answered, and that answer must
// not be lost to a failover.
func (s *Service) claimFailed(ctx context.Context, c idempotency.Claim, err error) error {
	if errors.Is(err, idempotency.ErrInFlight) || errors.Is(err, idempotency.ErrKeyReused) {
		return err
	}
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	if uerr := s.Store.Unclaim(record, c); uerr != nil {
		s.Log.ErrorContext(ctx, "undo a claim whose outcome was lost", "key", c.Key, "err", uerr)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// shed refuses new work at once while the provider's protections would
// refuse its call anyway. Under overload that keeps refusals cheap: one
// read instead of a claim and an abandon, each a write. A key that already
// has a record goes on: a replay needs no provider, and resumed work is
// refused later, keeping its record.
func (s *Service) shed(ctx context.Context, req idempotency.Request) error {
	a, ok := s.Provider.(Admitter)
	if !ok {
		return nil
	}
	refusal := a.Admit()
	if refusal == nil {
		return nil
	}
	if known, err := s.Store.HasKey(ctx, req); err == nil && !known {
		return fmt.Errorf("%w: %w", ErrUnavailable, refusal)
	}
	return nil
}

// charge charges a payment whose key the caller holds, and settles it.
//
// Redis plays no part here. Its in-flight lock only spares Postgres the
// obvious duplicates; whether this request may act is the Postgres
// lease's to say, checked in the statement that settles. A lock Redis lost
// (a flush, a restart) therefore changes nothing.
func (s *Service) charge(ctx context.Context, c idempotency.Claim, p Payment, requestID string) (idempotency.Response, error) {
	clock := startClock(c.At)
	call, cancel := s.callBudget(ctx)
	ch, err := s.Provider.Charge(call, provider.ChargeRequest{
		IdempotencyKey: p.ID, // the same on every attempt, by anyone
		Amount:         p.Amount,
		Currency:       p.Currency,
		Reference:      p.ID,
	})
	cancel()
	switch {
	case errors.Is(err, provider.ErrNotSent):
		return idempotency.Response{}, s.notSent(ctx, c, err)
	case err != nil:
		// It may have charged. The payment stays processing, and the
		// lease is released so that a retry or the reconciler can settle
		// it at once: same provider key, so it can only find this charge.
		s.Log.WarnContext(ctx, "provider outcome unknown; payment stays processing", "payment_id", p.ID, "err", err)
		return s.pending(ctx, c, p, requestID)
	case ch.Status == provider.ChargeSucceeded:
		p.Status, p.ProviderChargeID = StatusSucceeded, ch.ID
	case ch.Status == provider.ChargeDeclined:
		p.Status, p.ProviderChargeID, p.FailureCode = StatusFailed, ch.ID, ch.Code
	default:
		s.Log.ErrorContext(ctx, "provider answered an unknown charge status; payment stays processing", "payment_id", p.ID, "status", ch.Status)
		return s.pending(ctx, c, p, requestID)
	}
	p.UpdatedAt = clock.now()
	resp, err := s.Views.Payment(p, requestID)
	if err != nil {
		return idempotency.Response{}, err
	}
	resp.Final = true
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	// Retried while its outcome is unknown (a connection cut, a failover),
	// within the record budget: the settle is fenced by the lease's token,
	// and one that committed with its answer lost is found complete by the
	// next attempt, which returns the stored answer. Repeating it can
	// change nothing.
	stored, err := postgres.RetryFailover(record, func(ctx context.Context) (*idempotency.Response, error) {
		return s.Store.SettlePayment(ctx, c, p, resp, 0)
	}, settleOutcomes...)
	switch {
	case errors.Is(err, idempotency.ErrLeaseLost):
		// Our lease was taken over while we were at the provider: the new
		// holder drives the payment, and meets the same charge. (Or the
		// key's record is gone: a failover to a replica that had not
		// received the claim. Then only this log line knows the charge.)
		s.Log.WarnContext(ctx, "lease lost before recording the provider's answer", "payment_id", p.ID, "charge_id", p.ProviderChargeID, "status", p.Status)
		return idempotency.Response{}, idempotency.ErrInFlight
	case err != nil:
		// The provider has answered but we could not record it: the
		// payment stays processing until a retry or the reconciler.
		s.Log.ErrorContext(ctx, "record provider answer", "payment_id", p.ID, "err", err)
		p.Status, p.ProviderChargeID, p.FailureCode = StatusProcessing, "", ""
		return s.pending(ctx, c, p, requestID)
	case stored != nil:
		// Settled just before by a request that took our lease over: the
		// stored answer is the answer, and it is the same charge.
		return *stored, nil
	}
	return resp, nil
}

// refund refunds a refund whose key the caller holds, and settles it.
func (s *Service) refund(ctx context.Context, c idempotency.Claim, r Refund, requestID string) (idempotency.Response, error) {
	clock := startClock(c.At)
	call, cancel := s.callBudget(ctx)
	rf, err := s.Provider.Refund(call, provider.RefundRequest{
		IdempotencyKey: r.ID, // the same on every attempt, by anyone
		Charge:         r.ChargeID,
		Amount:         r.Amount,
		Reference:      r.ID,
	})
	cancel()
	switch {
	case errors.Is(err, provider.ErrNotSent):
		return idempotency.Response{}, s.notSent(ctx, c, err)
	case err != nil:
		s.Log.WarnContext(ctx, "provider outcome unknown; refund stays processing", "refund_id", r.ID, "err", err)
		return s.pendingRefund(ctx, c, r, requestID)
	case rf.Status == provider.RefundSucceeded:
		r.Status, r.ProviderRefundID = StatusSucceeded, rf.ID
	case rf.Status == provider.RefundRefused:
		r.Status, r.FailureCode = StatusFailed, rf.Code
	default:
		s.Log.ErrorContext(ctx, "provider answered an unknown refund status; refund stays processing", "refund_id", r.ID, "status", rf.Status)
		return s.pendingRefund(ctx, c, r, requestID)
	}
	r.UpdatedAt = clock.now()
	resp, err := s.Views.Refund(r, requestID)
	if err != nil {
		return idempotency.Response{}, err
	}
	resp.Final = true
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	stored, err := postgres.RetryFailover(record, func(ctx context.Context) (*idempotency.Response, error) {
		return s.Store.SettleRefund(ctx, c, r, resp, 0)
	}, settleOutcomes...)
	switch {
	case errors.Is(err, idempotency.ErrLeaseLost):
		s.Log.WarnContext(ctx, "lease lost before recording the provider's answer", "refund_id", r.ID, "provider_refund_id", r.ProviderRefundID, "status", r.Status)
		return idempotency.Response{}, idempotency.ErrInFlight
	case err != nil:
		s.Log.ErrorContext(ctx, "record provider answer", "refund_id", r.ID, "err", err)
		r.Status, r.ProviderRefundID, r.FailureCode = StatusProcessing, "", ""
		return s.pendingRefund(ctx, c, r, requestID)
	case stored != nil:
		return *stored, nil
	}
	return resp, nil
}

// settleOutcomes are a settle's answers, not failures: retrying changes
// nothing about them.
var settleOutcomes = []error{idempotency.ErrLeaseLost, idempotency.ErrAttemptTooRecent}

// callBudget returns ctx with its deadline brought forward by
// SettleTimeout, for the provider call: every attempt and retry of it ends
// in time for the answer to be recorded before the request's deadline.
func (s *Service) callBudget(ctx context.Context) (context.Context, context.CancelFunc) {
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(ctx, deadline.Add(-s.SettleTimeout))
	}
	return context.WithCancel(ctx)
}

// recordBudget returns the context of the writes after the provider call:
// SettleTimeout of its own, which neither ctx's deadline nor its
// cancellation cuts short. Whatever the call's outcome, the writes that
// record it (or release the lease) must happen: skipping them drops an
// answer, or strands the key behind a lease nobody uses.
func (s *Service) recordBudget(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.SettleTimeout)
}

// notSent handles a call that never reached the provider (a protection
// refused it, or the provider was unreachable).
func (s *Service) notSent(ctx context.Context, c idempotency.Claim, cause error) error {
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	if c.New {
		// Never sent, and created by this very request: nothing can have
		// happened under this id. Forget it, so the client's retry
		// starts afresh.
		if err := s.Store.Abandon(record, c); err != nil && !errors.Is(err, idempotency.ErrLeaseLost) {
			s.Log.ErrorContext(ctx, "abandon unsent work", "key", c.Key, "err", err)
		}
	} else if err := s.Store.Release(record, c, false); err != nil && !errors.Is(err, idempotency.ErrLeaseLost) {
		// Resumed: an earlier attempt may have reached the provider. Keep it.
		s.Log.ErrorContext(ctx, "release lease", "key", c.Key, "err", err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, cause)
}

// pending answers with the payment still processing (202), and releases
// its lease.
func (s *Service) pending(ctx context.Context, c idempotency.Claim, p Payment, requestID string) (idempotency.Response, error) {
	s.release(ctx, c)
	return s.Views.Payment(p, requestID)
}

// pendingRefund answers with the refund still processing (202), and
// releases its lease.
func (s *Service) pendingRefund(ctx context.Context, c idempotency.Claim, r Refund, requestID string) (idempotency.Response, error) {
	s.release(ctx, c)
	return s.Views.Refund(r, requestID)
}

func (s *Service) release(ctx context.Context, c idempotency.Claim) {
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	if err := s.Store.Release(record, c, false); err != nil && !errors.Is(err, idempotency.ErrLeaseLost) {
		s.Log.ErrorContext(ctx, "release lease", "key", c.Key, "err", err)
	}
}

// Get returns the client's payment.
func (s *Service) Get(ctx context.Context, clientID, id string) (Payment, error) {
	if !storable(id) {
		return Payment{}, ErrNotFound // no such id can exist; asking would fail
	}
	p, err := s.Store.Payment(ctx, clientID, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Payment{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return p, err
}

// Page is one page of a list.
type Page struct {
	Payments []Payment
	HasMore  bool
}

// List returns the client's payments, newest first, after startingAfter.
func (s *Service) List(ctx context.Context, clientID string, limit int, startingAfter string) (Page, error) {
	if !storable(startingAfter) {
		return Page{}, ErrBadCursor
	}
	payments, hasMore, err := s.Store.Payments(ctx, clientID, limit, startingAfter)
	switch {
	case errors.Is(err, ErrBadCursor):
		return Page{}, err
	case err != nil:
		return Page{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return Page{Payments: payments, HasMore: hasMore}, nil
}

// Refunds lists the refunds of the client's payment, newest first.
func (s *Service) Refunds(ctx context.Context, clientID, paymentID string) ([]Refund, error) {
	if !storable(paymentID) {
		return nil, ErrNotFound
	}
	refunds, err := s.Store.Refunds(ctx, clientID, paymentID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return refunds, err
}

// detach keeps ctx's deadline and values but not its cancellation. Once a
// charge is under way, a client hanging up must not abandon it half-done:
// the provider call and the database update finish (or time out) together.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	detached := context.WithoutCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(detached, deadline)
	}
	return context.WithCancel(detached)
}

// dbClock tells the database's time from a reading of it and the
// monotonic clock since: the times a holder writes (updated_at) are then
// on the same clock as those the database wrote (created_at), whatever
// this machine's wall clock says, and are known before the statement
// that writes them, to render the answer stored with it.
type dbClock struct {
	at    time.Time // the database's time, read at local
	local time.Time
}

func startClock(at time.Time) dbClock { return dbClock{at: at, local: time.Now()} }

// now returns the database's time now, to the microsecond it stores.
func (c dbClock) now() time.Time {
	return c.at.Add(time.Since(c.local)).Truncate(time.Microsecond)
}

// newID returns prefix and 128 random bits in hex: payment and refund ids.
func newID(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return prefix + hex.EncodeToString(b)
}
