package payments

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// Errors callers branch on. The API maps each to one HTTP status.
var (
	ErrNotFound    = errors.New("payment not found")
	ErrBadCursor   = errors.New("starting_after names no payment of this client")
	ErrKeyReused   = errors.New("idempotency key reused with a different request")
	ErrInFlight    = errors.New("a request with this idempotency key is in flight")
	ErrUnavailable = errors.New("a dependency is unavailable")
)

// Provider is what the service needs of the payment provider. The plain
// HTTP client satisfies it, and so does the same client wrapped in the
// resilience layer: the service cannot tell, and should not.
type Provider interface {
	Charge(ctx context.Context, req provider.ChargeRequest) (provider.Charge, error)
	FindCharge(ctx context.Context, idempotencyKey string) (provider.Charge, bool, error)
}

// Admitter is implemented by a Provider that can tell, without calling
// anything, that it would refuse a call now (its bulkhead is full, its
// breaker open).
type Admitter interface{ Admit() error }

// Response is the answer to a payment request, as the API renders it. The
// final one (for a charged or failed payment) is stored with the payment
// and replayed to every retry of its idempotency key, byte for byte.
type Response struct {
	Status int
	Body   []byte
}

// Renderer renders a payment's response. It is the API's, injected so
// that the service can store the exact bytes in the same transaction that
// settles the payment, and the reconciler can settle payments no request
// is waiting for. requestID identifies the request (or reconciler run)
// that settled the payment.
type Renderer func(p Payment, requestID string) (Response, error)

// Config wires a Service.
type Config struct {
	Repo     *paymentsdb.Payments
	Provider Provider
	Render   Renderer
	// Lease is how long a request may drive a payment before another may
	// take it over: the time a crashed request holds its key. It must
	// outlast everything a request can still do: its deadline, plus
	// SettleTimeout.
	Lease time.Duration
	// SettleTimeout is the budget of the writes that record the provider's
	// answer. The provider call ends this long before the request's
	// deadline, and the writes get this long of their own, whatever the
	// deadline or the client does: an answer received is never dropped.
	SettleTimeout time.Duration
	Metrics       *resilience.IdempotencyMetrics
	Log           *slog.Logger
}

// Service creates, reads and lists payments.
type Service struct {
	Config
	newID func() string
}

// NewService returns a service.
func NewService(cfg Config) *Service {
	return &Service{Config: cfg, newID: newPaymentID}
}

// CreateInput is a request to create a payment. Create validates it.
type CreateInput struct {
	ClientID       string
	IdempotencyKey string
	// Fingerprint identifies the request (method, route, client, canonical
	// body): the same key with another fingerprint is a client bug.
	Fingerprint string
	RequestID   string
	Request     CreateRequest
}

// Result is the outcome of Create.
type Result struct {
	Payment  Payment
	Response Response
	// Replayed is true when the response is the one stored for the key by
	// an earlier request.
	Replayed bool
}

// Create validates the request, records the payment and charges it once.
//
// The key is claimed in Postgres first (paymentsdb.Payments.Claim): a new key
// inserts the payment under a lease; a processing payment whose lease
// expired is taken over and driven again with the same provider key; a
// final payment is replayed; anything else is refused as in flight (409) or
// as a reused key (422). The response of a charged or declined payment is
// stored in the transaction that settles it, and is what every retry gets.
func (s *Service) Create(ctx context.Context, in CreateInput) (Result, error) {
	if err := in.Request.Validate(); err != nil {
		return Result{}, err
	}
	if err := s.shed(ctx, in); err != nil {
		return Result{}, err
	}
	// From here on the work must not stop halfway because the client hung
	// up: it runs to its end or to the request's deadline.
	work, cancel := detach(ctx)
	defer cancel()
	token := newToken()
	p := paymentsdb.Payment{
		ID:             s.newID(),
		ClientID:       in.ClientID,
		IdempotencyKey: in.IdempotencyKey,
		Fingerprint:    in.Fingerprint,
		Amount:         in.Request.Amount,
		Currency:       in.Request.Currency,
		Description:    in.Request.Description,
		Metadata:       in.Request.Metadata,
	}
	claim, err := s.Repo.Claim(work, p, token, s.Lease)
	if err != nil {
		// The claim may have committed and only its answer been lost:
		// undo it, or the key stays blocked behind our lease. Nothing was
		// sent under this token, so undoing is safe.
		record, cancel := s.recordBudget(ctx)
		defer cancel()
		if uerr := s.Repo.Unclaim(record, p, token); uerr != nil {
			s.Log.Error("undo a claim whose outcome was lost", "payment_id", p.ID, "err", uerr)
		}
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !claim.Owned {
		return s.answerExisting(claim.Payment, in)
	}
	s.Metrics.Observe(resilience.OutcomeNew)
	return s.drive(work, claim, token, in.RequestID)
}

// shed refuses a new payment at once while the provider's protections
// would refuse its charge anyway. Under overload that keeps refusals cheap:
// one read instead of a claim, a lease and an abandon, each a write. A key
// that already names a payment goes on (a replay needs no provider; a
// resumed payment is refused later, keeping its row).
func (s *Service) shed(ctx context.Context, in CreateInput) error {
	a, ok := s.Provider.(Admitter)
	if !ok {
		return nil
	}
	refusal := a.Admit()
	if refusal == nil {
		return nil
	}
	if _, err := s.Repo.ByKey(ctx, in.ClientID, in.IdempotencyKey); errors.Is(err, paymentsdb.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrUnavailable, refusal)
	}
	return nil
}

// answerExisting answers a request for a key another request holds or has
// completed.
func (s *Service) answerExisting(row paymentsdb.Payment, in CreateInput) (Result, error) {
	switch {
	case row.Status == paymentsdb.StatusProcessing && row.LeaseActive:
		s.Metrics.Observe(resilience.OutcomeInFlight)
		return Result{}, ErrInFlight
	case row.Fingerprint != in.Fingerprint:
		s.Metrics.Observe(resilience.OutcomeMismatch)
		return Result{}, ErrKeyReused
	case row.Status == paymentsdb.StatusProcessing:
		// Its lease expired and another request took it over between our
		// statements: that one is driving it now.
		s.Metrics.Observe(resilience.OutcomeInFlight)
		return Result{}, ErrInFlight
	}
	s.Metrics.Observe(resilience.OutcomeReplay)
	p := fromRow(row)
	resp := Response{Status: row.ResponseStatus, Body: row.ResponseBody}
	if len(resp.Body) == 0 { // settled before responses were stored
		var err error
		if resp, err = s.Render(p, in.RequestID); err != nil {
			return Result{}, err
		}
	}
	return Result{Payment: p, Response: resp, Replayed: true}, nil
}

// drive charges a payment whose lease the caller holds, and settles it.
//
// Redis plays no part here. Its in-flight lock only spares Postgres the
// obvious duplicates; whether this request may charge is the Postgres
// lease's to say, checked in the statements that write (StartCharge,
// Settle). A lock Redis lost (a flush, a restart) therefore changes
// nothing: the request completes, or cleans up, as its lease says.
func (s *Service) drive(ctx context.Context, claim paymentsdb.Claim, token, requestID string) (Result, error) {
	row := claim.Payment
	log := s.Log.With("payment_id", row.ID)

	if err := s.Repo.StartCharge(ctx, row.ID, token, s.Lease); err != nil {
		if errors.Is(err, paymentsdb.ErrLeaseLost) {
			return Result{}, ErrInFlight // taken over: another request drives it
		}
		// Nothing was sent: free the key rather than strand it behind a
		// lease nobody uses.
		return Result{}, s.notSent(ctx, claim, token, err)
	}

	call, cancel := s.callBudget(ctx)
	ch, err := s.Provider.Charge(call, provider.ChargeRequest{
		IdempotencyKey: row.ID, // the same on every attempt, by anyone
		Amount:         row.Amount,
		Currency:       row.Currency,
		Reference:      row.ID,
	})
	cancel()
	var settle paymentsdb.Settlement
	switch {
	case errors.Is(err, provider.ErrNotSent):
		return Result{}, s.notSent(ctx, claim, token, err)
	case err != nil:
		// It may have charged. The payment stays processing, and the
		// lease is released so that a retry or the reconciler can settle
		// it at once: same provider key, so it can only find this charge.
		log.Warn("provider outcome unknown; payment stays processing", "err", err)
		return s.processing(ctx, row, token, requestID)
	case ch.Status == provider.ChargeSucceeded:
		settle = paymentsdb.Settlement{Status: paymentsdb.StatusSucceeded, ProviderChargeID: ch.ID}
	case ch.Status == provider.ChargeDeclined:
		settle = paymentsdb.Settlement{Status: paymentsdb.StatusFailed, ProviderChargeID: ch.ID, FailureCode: ch.Code}
	default:
		log.Error("provider answered an unknown charge status; payment stays processing", "status", ch.Status)
		return s.processing(ctx, row, token, requestID)
	}
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	settled, now, err := s.Repo.Settle(record, row.ID, token, settle, s.respond(requestID))
	switch {
	case errors.Is(err, paymentsdb.ErrLeaseLost):
		// Our lease was taken over while we were at the provider: the new
		// holder drives the payment, and meets the same charge.
		return Result{}, ErrInFlight
	case err != nil:
		// The provider has answered but we could not record it: the
		// payment stays processing until a retry or the reconciler.
		log.Error("record provider answer", "err", err)
		return s.processing(ctx, row, token, requestID)
	}
	// Settled by us, or just before by a request that took over our
	// lease and settled it: either way the stored response is the answer.
	return Result{
		Payment:  fromRow(settled),
		Response: Response{Status: settled.ResponseStatus, Body: settled.ResponseBody},
		Replayed: !now,
	}, nil
}

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
// record it (or release the lease) must happen: skipping them drops a
// charge's answer, or strands the key behind a lease nobody uses.
func (s *Service) recordBudget(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.SettleTimeout)
}

// notSent handles a charge that never reached the provider (a protection
// refused it, or the provider was unreachable).
func (s *Service) notSent(ctx context.Context, claim paymentsdb.Claim, token string, cause error) error {
	ctx, cancel := s.recordBudget(ctx)
	defer cancel()
	if claim.Created {
		// Never sent, and created by this very request: nothing can have
		// been charged under this payment id. Forget it, so the client's
		// retry starts afresh.
		if err := s.Repo.Abandon(ctx, claim.Payment.ID, token); err != nil && !errors.Is(err, paymentsdb.ErrLeaseLost) {
			s.Log.Error("abandon unsent payment", "payment_id", claim.Payment.ID, "err", err)
		}
	} else if err := s.Repo.ReleaseLease(ctx, claim.Payment.ID, token); err != nil && !errors.Is(err, paymentsdb.ErrLeaseLost) {
		// Resumed: an earlier attempt may have charged. Keep it.
		s.Log.Error("release lease", "payment_id", claim.Payment.ID, "err", err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, cause)
}

// processing answers with the payment still processing (202), and
// releases its lease.
func (s *Service) processing(ctx context.Context, row paymentsdb.Payment, token, requestID string) (Result, error) {
	record, cancel := s.recordBudget(ctx)
	defer cancel()
	if err := s.Repo.ReleaseLease(record, row.ID, token); err != nil && !errors.Is(err, paymentsdb.ErrLeaseLost) {
		s.Log.Error("release lease", "payment_id", row.ID, "err", err)
	}
	p := fromRow(row)
	resp, err := s.Render(p, requestID)
	if err != nil {
		return Result{}, err
	}
	return Result{Payment: p, Response: resp}, nil
}

// respond renders the response stored with a settled payment.
func (s *Service) respond(requestID string) paymentsdb.Respond {
	return func(settled paymentsdb.Payment) (int, []byte, error) {
		r, err := s.Render(fromRow(settled), requestID)
		return r.Status, r.Body, err
	}
}

// Get returns the client's payment.
func (s *Service) Get(ctx context.Context, clientID, id string) (Payment, error) {
	if !storable(id) {
		return Payment{}, ErrNotFound // no such id can exist; asking would fail
	}
	row, err := s.Repo.Get(ctx, clientID, id)
	switch {
	case errors.Is(err, paymentsdb.ErrNotFound):
		return Payment{}, ErrNotFound
	case err != nil:
		return Payment{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fromRow(row), nil
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
	rows, hasMore, err := s.Repo.List(ctx, clientID, limit, startingAfter)
	switch {
	case errors.Is(err, paymentsdb.ErrCursorNotFound):
		return Page{}, ErrBadCursor
	case err != nil:
		return Page{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	page := Page{Payments: make([]Payment, len(rows)), HasMore: hasMore}
	for i, row := range rows {
		page.Payments[i] = fromRow(row)
	}
	return page, nil
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

func fromRow(r paymentsdb.Payment) Payment {
	return Payment{
		ID:               r.ID,
		ClientID:         r.ClientID,
		Amount:           r.Amount,
		Currency:         r.Currency,
		Status:           Status(r.Status),
		Description:      r.Description,
		Metadata:         r.Metadata,
		ProviderChargeID: r.ProviderChargeID,
		FailureCode:      r.FailureCode,
		CreatedAt:        r.CreatedAt,
		UpdatedAt:        r.UpdatedAt,
	}
}

// newPaymentID returns "pay_" and 128 random bits in hex.
func newPaymentID() string { return "pay_" + newToken() }

// newToken returns 128 random bits in hex: lease tokens and ids.
func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
