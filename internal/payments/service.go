package payments

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/resiliencekit/payservice/internal/db"
	"github.com/resiliencekit/payservice/internal/provider"
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

// Service creates, reads and lists payments.
type Service struct {
	repo     *db.Payments
	provider Provider
	log      *slog.Logger
	newID    func() string
}

// NewService returns a service storing payments in repo and charging
// through p.
func NewService(repo *db.Payments, p Provider, log *slog.Logger) *Service {
	return &Service{repo: repo, provider: p, log: log, newID: newPaymentID}
}

// CreateInput is a validated-by-Create request to create a payment.
type CreateInput struct {
	ClientID       string
	IdempotencyKey string
	// Fingerprint identifies the request (method, route, client, canonical
	// body): the same key with another fingerprint is a client bug.
	Fingerprint string
	Request     CreateRequest
}

// Result is the outcome of Create.
type Result struct {
	Payment Payment
	// Replayed is true when an earlier request with the same key created
	// the payment and this one only returns it.
	Replayed bool
}

// Create validates the request, records the payment and charges it once.
// The returned payment is succeeded (charged), failed (declined) or, when
// the provider's answer is unknown, processing.
func (s *Service) Create(ctx context.Context, in CreateInput) (Result, error) {
	if err := in.Request.Validate(); err != nil {
		return Result{}, err
	}
	row, created, err := s.repo.Create(ctx, db.Payment{
		ID:             s.newID(),
		ClientID:       in.ClientID,
		IdempotencyKey: in.IdempotencyKey,
		Fingerprint:    in.Fingerprint,
		Amount:         in.Request.Amount,
		Currency:       in.Request.Currency,
		Description:    in.Request.Description,
		Metadata:       in.Request.Metadata,
	})
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !created {
		switch {
		case row.Fingerprint != in.Fingerprint:
			return Result{}, ErrKeyReused
		case row.Status == db.StatusProcessing:
			return Result{}, ErrInFlight
		}
		return Result{Payment: fromRow(row), Replayed: true}, nil
	}
	work, cancel := detach(ctx)
	defer cancel()
	p, err := s.charge(work, row)
	return Result{Payment: p}, err
}

// charge calls the provider for a processing payment and records the answer.
func (s *Service) charge(ctx context.Context, row db.Payment) (Payment, error) {
	log := s.log.With("payment_id", row.ID)
	ch, err := s.provider.Charge(ctx, provider.ChargeRequest{
		IdempotencyKey: row.ID, // the same on every retry, by anyone
		Amount:         row.Amount,
		Currency:       row.Currency,
		Reference:      row.ID,
	})
	var settle db.Settlement
	switch {
	case errors.Is(err, provider.ErrNotSent):
		// Nothing reached the provider, so nothing was charged: forget
		// the payment so that the client's retry starts afresh.
		if aerr := s.repo.Abandon(ctx, row.ID); aerr != nil {
			log.Error("abandon unsent payment", "err", aerr)
		}
		return Payment{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	case err != nil:
		// It may have charged. The payment stays processing; the
		// provider's idempotency key makes settling it later safe.
		log.Warn("provider outcome unknown; payment stays processing", "err", err)
		return fromRow(row), nil
	case ch.Status == provider.ChargeSucceeded:
		settle = db.Settlement{Status: db.StatusSucceeded, ProviderChargeID: ch.ID}
	case ch.Status == provider.ChargeDeclined:
		settle = db.Settlement{Status: db.StatusFailed, ProviderChargeID: ch.ID, FailureCode: ch.Code}
	default:
		log.Error("provider answered an unknown charge status; payment stays processing", "status", ch.Status)
		return fromRow(row), nil
	}
	settled, err := s.repo.Settle(ctx, row.ID, settle)
	if err != nil {
		// The provider has answered but we could not record it. The
		// payment stays processing and is settled by the next retry.
		log.Error("record provider answer", "err", err)
		return fromRow(row), nil
	}
	return fromRow(settled), nil
}

// Get returns the client's payment.
func (s *Service) Get(ctx context.Context, clientID, id string) (Payment, error) {
	row, err := s.repo.Get(ctx, clientID, id)
	switch {
	case errors.Is(err, db.ErrNotFound):
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
	rows, hasMore, err := s.repo.List(ctx, clientID, limit, startingAfter)
	switch {
	case errors.Is(err, db.ErrCursorNotFound):
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

func fromRow(r db.Payment) Payment {
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
func newPaymentID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return "pay_" + hex.EncodeToString(b)
}
