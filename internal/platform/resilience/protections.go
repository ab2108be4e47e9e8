package resilience

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/config"
)

// Protections are the patterns a service puts around one dependency, one
// instance each, shared by every call to it. A client composes them, outermost
// first: the caller's deadline, the bulkhead, the egress limit, the retrier,
// the breaker, then each attempt with its own timeout.
type Protections struct {
	Bulkhead *Bulkhead
	Egress   *EgressLimiter
	Retrier  *Retrier
	Breaker  *Breaker
}

// ProtectionSettings configure a dependency's Protections.
type ProtectionSettings struct {
	Breaker  BreakerSettings
	Retry    RetrySettings
	Budget   BudgetSettings
	Bulkhead BulkheadSettings
	Egress   EgressSettings
}

// DefaultProtections are starting points for a dependency answering in
// tens of milliseconds: tune them to its capacity and quota.
func DefaultProtections() ProtectionSettings {
	return ProtectionSettings{
		Breaker: BreakerSettings{Window: 10 * time.Second, MinRequests: 10, FailureRatio: 0.5, OpenTimeout: 30 * time.Second, HalfOpenProbes: 3},
		Retry:   RetrySettings{MaxAttempts: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second, MaxRetryAfter: 2 * time.Second},
		Budget:  BudgetSettings{Ratio: 0.2, MinPerSecond: 5, Capacity: 10},
		// Concurrency × the dependency's latency is the throughput it
		// can get from one replica; the queue absorbs a burst.
		Bulkhead: BulkheadSettings{Concurrency: 32, Queue: 64},
		Egress:   EgressSettings{PerSecond: 100, Burst: 20},
	}
}

// Bind declares the settings' variables: BREAKER_*, RETRY_* (the budget's
// as RETRY_BUDGET_*), BULKHEAD_*, RATE_LIMIT and RATE_BURST, after b's
// prefix (say PROVIDER_).
func (s *ProtectionSettings) Bind(b *config.Binder) {
	s.Breaker.Bind(b.Prefix("BREAKER_"))
	s.Retry.Bind(b.Prefix("RETRY_"))
	s.Budget.Bind(b.Prefix("RETRY_BUDGET_"))
	s.Bulkhead.Bind(b.Prefix("BULKHEAD_"))
	s.Egress.Bind(b)
}

// NewProtections builds the protections of the dependency name. classify
// tells the breaker which errors are the dependency's fault, verdict the
// retrier which are worth another attempt; attemptTimeout is one attempt's
// timeout, which the retrier keeps time for.
func NewProtections(name string, s ProtectionSettings, attemptTimeout time.Duration, classify func(error) Outcome,
	verdict func(error) Verdict, reg prometheus.Registerer, log *slog.Logger) (Protections, error) {
	s.Breaker.Name, s.Retry.Name, s.Budget.Name, s.Bulkhead.Name, s.Egress.Name = name, name, name, name, name
	s.Retry.AttemptTimeout = attemptTimeout
	breaker, err := NewBreaker(s.Breaker, classify, reg, log)
	if err != nil {
		return Protections{}, err
	}
	budget, err := NewRetryBudget(s.Budget, reg)
	if err != nil {
		return Protections{}, err
	}
	retrier, err := NewRetrier(s.Retry, budget, verdict, reg)
	if err != nil {
		return Protections{}, err
	}
	egress, err := NewEgressLimiter(s.Egress, reg)
	if err != nil {
		return Protections{}, err
	}
	bulkhead, err := NewBulkhead(s.Bulkhead, reg)
	if err != nil {
		return Protections{}, err
	}
	return Protections{Bulkhead: bulkhead, Egress: egress, Retrier: retrier, Breaker: breaker}, nil
}

// Bind declares the breaker's variables, after b's prefix.
func (s *BreakerSettings) Bind(b *config.Binder) {
	b.Duration("WINDOW", &s.Window, "rolling window of the circuit breaker's trip rule")
	b.Int("MIN_REQUESTS", &s.MinRequests, 1, 100000, "calls in the window before the breaker may trip")
	b.Float("FAILURE_RATIO", &s.FailureRatio, 0.01, 1, "fraction of failed calls in the window that trips the breaker")
	b.Duration("OPEN_TIMEOUT", &s.OpenTimeout, "how long a tripped breaker fails calls at once before probing")
	b.Int("HALF_OPEN_PROBES", &s.HalfOpenProbes, 1, 1000, "probe calls let through half-open; all must succeed to close")
}

// Bind declares the retrier's variables, after b's prefix. The attempt
// timeout is the dependency's own, set by NewProtections.
func (s *RetrySettings) Bind(b *config.Binder) {
	b.Int("MAX_ATTEMPTS", &s.MaxAttempts, 1, 10, "attempts per call, the first included")
	b.Duration("BASE_DELAY", &s.BaseDelay, "backoff before the first retry (doubling, capped, full jitter)")
	b.Duration("MAX_DELAY", &s.MaxDelay, "cap on the backoff between retries")
	b.DurationOrZero("MAX_RETRY_AFTER", &s.MaxRetryAfter, "longest Retry-After honoured; a longer one ends the retries")
}

// Bind declares the retry budget's variables, after b's prefix.
func (s *BudgetSettings) Bind(b *config.Binder) {
	b.Float("RATIO", &s.Ratio, 0, 10, "retries allowed per call, across all callers (the retry budget)")
	b.Float("MIN_PER_SECOND", &s.MinPerSecond, 0, 100000, "retries a second always allowed, so a quiet service can still retry")
	b.Int("CAPACITY", &s.Capacity, 1, 100000, "most retries the budget can save up")
}

// Bind declares the bulkhead's variables, after b's prefix.
func (s *BulkheadSettings) Bind(b *config.Binder) {
	b.Int("CONCURRENCY", &s.Concurrency, 1, 10000, "calls in progress at once")
	b.Int("QUEUE", &s.Queue, 0, 100000, "calls waiting for a slot; beyond, calls are refused at once")
}

// Bind declares the egress limit's variables, after b's prefix.
func (s *EgressSettings) Bind(b *config.Binder) {
	b.Float("RATE_LIMIT", &s.PerSecond, 0.1, 100000, "calls per second, the dependency's quota; a call waits for room only within its deadline")
	b.Int("RATE_BURST", &s.Burst, 1, 100000, "calls that may go at once above the steady rate")
}
