package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// Resilient is the provider client behind its protections, outermost first:
//
//	caller's deadline → bulkhead → egress rate limit → retry → circuit breaker → attempt timeout → HTTP
//
// The order matters. The bulkhead bounds how many calls wait at all, so it
// comes first. The egress limit spends one token per payment, not per
// attempt: retries take none, though each spends the provider's quota too;
// the retry budget is what bounds them. Retries go through the breaker, so
// an open breaker stops them; and each attempt has its own timeout inside
// the breaker, so a timeout counts as the provider's failure. That needs a
// whole attempt timeout left before the caller's deadline: the retrier
// starts no attempt without it, and the egress limit waits no longer than
// leaves it.
//
// Resilient has the same methods as Client: the payments service takes
// either and cannot tell.
//
// Traced (New with a tracer provider), each attempt gets a client span,
// "provider charge" and so on, as the attempt's HTTP request's parent in
// the provider's trace. Its attributes say how the protections treated
// it: resilience.attempt (1 for the first), resilience.breaker.state as
// the attempt met the breaker, resilience.bulkhead.wait_seconds (the
// call's wait for a bulkhead slot), and, when it failed, provider.sent
// (whether it may have reached the provider). An attempt the breaker
// refused has its span too; a call refused before any attempt (bulkhead
// full, no quota or time left) has none: the server span's answer says so.
type Resilient struct {
	client *Client
	p      resilience.Protections
	tracer trace.Tracer // nil: not traced
}

// NewResilient wraps c in p.
func NewResilient(c *Client, p resilience.Protections) *Resilient {
	return &Resilient{client: c, p: p}
}

// Settings configure the provider: where it is, one attempt's timeout, and
// the protections around it.
type Settings struct {
	URL         string
	Timeout     time.Duration
	Protections resilience.ProtectionSettings
}

// DefaultSettings are the protections' defaults, with an attempt timeout
// of 3s.
func DefaultSettings() Settings {
	return Settings{URL: "http://localhost:8081", Timeout: 3 * time.Second, Protections: resilience.DefaultProtections()}
}

// Bind declares URL, TIMEOUT and the protections' variables after b's
// prefix (PROVIDER_).
func (s *Settings) Bind(b *config.Binder) {
	b.URL("URL", &s.URL, []string{"http", "https"}, "base URL of the payment provider")
	b.Duration("TIMEOUT", &s.Timeout, "timeout of one provider attempt; no attempt starts with less time left before REQUEST_TIMEOUT - SETTLE_TIMEOUT")
	s.Protections.Bind(b)
}

// tracerName names the spans' instrumentation scope.
const tracerName = "github.com/resiliencekit/payservice/internal/payments/provider"

// New returns the provider's client behind its protections, and the
// protections (a shutdown drains their bulkhead). With tp not nil, its
// attempts are traced, and carry their trace context to the provider;
// only the W3C trace context, not baggage: the provider is a third party.
func New(s Settings, tp trace.TracerProvider, reg prometheus.Registerer, log *slog.Logger) (*Resilient, resilience.Protections, error) {
	cfg := Config{BaseURL: s.URL, AttemptTimeout: s.Timeout}
	if tp != nil {
		cfg.Propagator = propagation.TraceContext{}
	}
	client, err := NewClient(cfg)
	if err != nil {
		return nil, resilience.Protections{}, err
	}
	p, err := resilience.NewProtections("provider", s.Protections, s.Timeout, BreakerOutcome, RetryVerdict, reg, log)
	if err != nil {
		return nil, resilience.Protections{}, err
	}
	r := NewResilient(client, p)
	if tp != nil {
		r.tracer = tp.Tracer(tracerName)
	}
	return r, p, nil
}

// Charge is Client.Charge behind the protections. Its errors keep the
// client's taxonomy: a refusal by a protection before anything was sent
// (bulkhead full, breaker open, no quota left, too little time left for an
// attempt) matches ErrNotSent; and once any attempt may have reached the
// provider, the call's error matches ErrOutcomeUnknown, whatever later
// attempts met.
func (r *Resilient) Charge(ctx context.Context, req ChargeRequest) (Charge, error) {
	var ch Charge
	err := r.call(ctx, "charge", func(ctx context.Context) error {
		var err error
		ch, err = r.client.Charge(ctx, req)
		return err
	})
	return ch, err
}

// FindCharge is Client.FindCharge behind the protections.
func (r *Resilient) FindCharge(ctx context.Context, idempotencyKey string) (Charge, bool, error) {
	var (
		ch    Charge
		found bool
	)
	err := r.call(ctx, "find charge", func(ctx context.Context) error {
		var err error
		ch, found, err = r.client.FindCharge(ctx, idempotencyKey)
		return err
	})
	return ch, found, err
}

// Refund is Client.Refund behind the protections, with Charge's error
// taxonomy.
func (r *Resilient) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	var rf Refund
	err := r.call(ctx, "refund", func(ctx context.Context) error {
		var err error
		rf, err = r.client.Refund(ctx, req)
		return err
	})
	return rf, err
}

// FindRefund is Client.FindRefund behind the protections.
func (r *Resilient) FindRefund(ctx context.Context, idempotencyKey string) (Refund, bool, error) {
	var (
		rf    Refund
		found bool
	)
	err := r.call(ctx, "find refund", func(ctx context.Context) error {
		var err error
		rf, found, err = r.client.FindRefund(ctx, idempotencyKey)
		return err
	})
	return rf, found, err
}

// Admit reports whether a call would be refused right now without reaching
// the provider (bulkhead full, breaker open or its half-open probes all
// taken), as an error matching ErrNotSent. The payments service asks before
// it writes anything for a new payment: under overload, refusing costs
// nothing but this check.
func (r *Resilient) Admit() error {
	switch {
	case r.p.Bulkhead.Full():
		return &Error{Op: "charge", Err: resilience.ErrBulkheadFull}
	case r.p.Breaker.Open():
		return &Error{Op: "charge", Err: resilience.ErrBreakerOpen}
	}
	return nil
}

func (r *Resilient) call(ctx context.Context, op string, attempt func(context.Context) error) error {
	// Set by the attempt, read after Submit returns: the work runs on this
	// goroutine, within Submit.
	mayHaveSent := false
	var queued time.Time // when the call joined the bulkhead; only for a span
	if r.tracer != nil {
		queued = time.Now()
	}
	err := r.p.Bulkhead.Submit(ctx, func(ctx context.Context) error {
		var waited time.Duration
		if r.tracer != nil {
			waited = time.Since(queued)
		}
		if err := r.waitForQuota(ctx); err != nil {
			return err
		}
		n := 0
		return r.p.Retrier.Do(ctx, func(ctx context.Context) error {
			n++
			ctx, span := r.startAttempt(ctx, op, n, waited)
			err := r.p.Breaker.Execute(ctx, func(ctx context.Context) error {
				err := attempt(ctx)
				var perr *Error
				if errors.As(err, &perr) && perr.Sent {
					mayHaveSent = true
				}
				return err
			})
			endAttempt(span, err)
			return err
		})
	})
	if err == nil {
		return nil
	}
	var perr *Error
	switch {
	case mayHaveSent && !(errors.As(err, &perr) && perr.Sent):
		// The last attempt was refused or never sent, but an earlier one
		// may have charged. The chain is cut (%v, not %w) so that the
		// error cannot also match ErrNotSent and get the payment dropped.
		return &Error{Op: op, Sent: true, Err: fmt.Errorf("an earlier attempt may have reached the provider; then: %v", err)} //nolint:errorlint // cut on purpose, see above
	case errors.As(err, &perr):
		return err
	}
	// Refused by a protection before any attempt: nothing was sent.
	return &Error{Op: op, Err: err}
}

// startAttempt starts the span of attempt n of op, or returns a nil span
// when r is not traced.
func (r *Resilient) startAttempt(ctx context.Context, op string, n int, waited time.Duration) (context.Context, trace.Span) {
	if r.tracer == nil {
		return ctx, nil
	}
	attrs := []attribute.KeyValue{
		attribute.Int("resilience.attempt", n),
		attribute.String("resilience.breaker.state", r.p.Breaker.State()),
		attribute.Float64("resilience.bulkhead.wait_seconds", waited.Seconds()),
	}
	if n > 1 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(n-1))
	}
	return r.tracer.Start(ctx, "provider "+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// endAttempt ends the span of an attempt, if any, that ended with err.
func endAttempt(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		var perr *Error
		span.SetAttributes(attribute.Bool("provider.sent", errors.As(err, &perr) && perr.Sent))
	}
	span.End()
}

// waitForQuota waits for the egress limit, but only while a whole attempt
// could still follow before ctx's deadline: a token granted later would be
// spent on a call the retrier then refuses to start. Failing at once also
// frees the caller sooner.
func (r *Resilient) waitForQuota(ctx context.Context) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		return r.p.Egress.Wait(ctx)
	}
	waitCtx, cancel := context.WithDeadline(ctx, deadline.Add(-r.client.timeout))
	defer cancel()
	err := r.p.Egress.Wait(waitCtx)
	if err != nil && ctx.Err() == nil && waitCtx.Err() != nil {
		// Our shortened deadline had passed, not the caller's.
		return fmt.Errorf("%w (before waiting for provider quota)", resilience.ErrDeadlineTooClose)
	}
	return err
}

// BreakerOutcome tells the circuit breaker what a provider error says
// about the provider's health: 5xx, timeouts, network errors and garbled
// answers are failures; 4xx answers (a decline, a bad request, a 429) mean
// the provider is up and answering.
func BreakerOutcome(err error) resilience.Outcome {
	if err == nil {
		return resilience.Success
	}
	var perr *Error
	if !errors.As(err, &perr) {
		return resilience.Failure
	}
	if perr.StatusCode >= 400 && perr.StatusCode < 500 {
		return resilience.Success
	}
	return resilience.Failure
}

// RetryVerdict tells the retrier which provider errors are worth another
// attempt: 5xx, 429, timeouts and network errors, honouring the provider's
// Retry-After. Retrying a charge is safe only because every attempt carries
// the same idempotency key.
func RetryVerdict(err error) resilience.Verdict {
	var perr *Error
	if !errors.As(err, &perr) {
		return resilience.Verdict{}
	}
	switch code := perr.StatusCode; {
	case code == 0, code == 429, code >= 500:
		return resilience.Verdict{Retry: true, After: perr.RetryAfter}
	}
	return resilience.Verdict{}
}
