// Package bench measures what payservice's protections cost and what they
// buy, outside the service's own module so that the libraries it is
// compared with (failsafe-go) never enter the service's go.mod.
//
// This file is the overhead half: the same no-op dependency call made
// directly, through payservice's composition (internal/resilience, as
// internal/provider.Resilient composes it) and through the equivalent
// failsafe-go composition. overhead_test.go runs them as Go benchmarks and
// cmd/ratio prints them side by side with their ratios. The trade-off: a
// no-op call isolates the protections' own cost (locks, allocations,
// goroutine hand-offs, metrics), which is what a comparison needs, but it
// says nothing about their value under load: that is cmd/overload's job.
package bench

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/budget"
	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// Settings mirror the service's defaults (`server -h`), so both libraries
// are configured as payservice runs in production.
const (
	bulkheadWorkers = 32
	bulkheadQueue   = 64
	maxAttempts     = 3
	baseDelay       = 100 * time.Millisecond
	maxDelay        = time.Second
	budgetRatio     = 0.2
	breakerWindow   = 10 * time.Second
	breakerMinCalls = 10
	breakerRatio    = 0.5
	breakerOpen     = 30 * time.Second
	halfOpenProbes  = 3
	attemptTimeout  = 3 * time.Second
)

// A Composition is one way of making the dependency call.
type Composition struct {
	Name string
	Call func(context.Context) error
}

// noop is the dependency call: it does nothing, so what is measured is the
// protections around it.
func noop(context.Context) error { return nil }

// Compositions returns the compositions to compare, direct first. stop
// closes their bulkheads.
func Compositions() (cs []Composition, stop func(), err error) {
	ps, psBulkhead, err := payservice(false)
	if err != nil {
		return nil, nil, err
	}
	pse, pseBulkhead, err := payservice(true)
	if err != nil {
		psBulkhead.Close(context.Background())
		return nil, nil, err
	}
	stop = func() {
		psBulkhead.Close(context.Background())
		pseBulkhead.Close(context.Background())
	}
	return []Composition{
		{"direct", noop},
		{"payservice", ps},
		{"payservice+egress", pse},
		{"failsafe-go", failsafeGo()},
	}, stop, nil
}

// payservice composes internal/resilience exactly as provider.Resilient
// does (bulkhead → [egress] → retry → breaker → call), built with the real
// constructors, classifiers and metrics. The egress limiter's rate is so
// high that it never waits: only its bookkeeping is measured.
func payservice(withEgress bool) (func(context.Context) error, *resilience.Bulkhead, error) {
	const name = "provider"
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name: name, Window: breakerWindow, MinRequests: breakerMinCalls, FailureRatio: breakerRatio,
		OpenTimeout: breakerOpen, HalfOpenProbes: halfOpenProbes,
	}, provider.BreakerOutcome, reg, log)
	if err != nil {
		return nil, nil, err
	}
	retryBudget, err := resilience.NewRetryBudget(resilience.BudgetSettings{Name: name, Ratio: budgetRatio, MinPerSecond: 5, Capacity: 10}, reg)
	if err != nil {
		return nil, nil, err
	}
	retrier, err := resilience.NewRetrier(resilience.RetrySettings{
		Name: name, MaxAttempts: maxAttempts, BaseDelay: baseDelay, MaxDelay: maxDelay,
		MaxRetryAfter: 2 * time.Second, AttemptTimeout: attemptTimeout,
	}, retryBudget, provider.RetryVerdict, reg)
	if err != nil {
		return nil, nil, err
	}
	egress, err := resilience.NewEgressLimiter(resilience.EgressSettings{Name: name, PerSecond: 1e9, Burst: 1e6}, reg)
	if err != nil {
		return nil, nil, err
	}
	bh, err := resilience.NewBulkhead(resilience.BulkheadSettings{Name: name, Concurrency: bulkheadWorkers, Queue: bulkheadQueue}, reg)
	if err != nil {
		return nil, nil, err
	}
	call := func(ctx context.Context) error {
		return bh.Submit(ctx, func(ctx context.Context) error {
			if withEgress {
				if err := egress.Wait(ctx); err != nil {
					return err
				}
			}
			return retrier.Do(ctx, func(ctx context.Context) error {
				return breaker.Execute(ctx, noop)
			})
		})
	}
	return call, bh, nil
}

// failsafeGo is the same composition in failsafe-go, outermost first:
// bulkhead, retry policy, circuit breaker. Where the two differ:
//
//   - Bulkhead: both are semaphores of 32 permits, and the call runs on
//     the caller's goroutine. payservice's lets at most 64 callers wait,
//     first come first served; failsafe-go has no bound on waiters, only
//     on the time they wait (WithMaxWaitTime); left at 0, a call finding
//     all permits taken is refused at once, as payservice's would be with
//     PROVIDER_BULKHEAD_QUEUE=0. The benchmarks never fill either, so only
//     the uncontended path is timed.
//   - Retry budget: failsafe-go's caps retries in flight at 20% of the
//     executions in flight (at least 3); payservice's is a token bucket
//     (0.2 per call, 5/s floor, 10 saved). Both are consulted per call.
//   - Backoff: the same full jitter, uniform in [0, min(1s, 100ms·2^n)),
//     through WithDelayFunc (WithBackoff+WithJitterFactor jitters around
//     the delay instead). Retry-After is not honoured here.
//   - Breaker: WithFailureRateThreshold(0.5, 10, 10s) is the same rule
//     over a 10-bucket rolling window, as gobreaker's is under payservice's;
//     WithSuccessThreshold(3) lets 3 probes through half-open and closes
//     after 3 successes, reopening on any failure, as ours does.
//   - Metrics: payservice's composition updates Prometheus metrics on every
//     call (bulkhead gauges, the retry attempts counter); failsafe-go's has
//     no listeners configured, so it pays for none.
func failsafeGo() func(context.Context) error {
	bh := bulkhead.NewBuilder[any](bulkheadWorkers).Build()
	rp := retrypolicy.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool { return err != nil && provider.RetryVerdict(err).Retry }).
		AbortOnErrors(circuitbreaker.ErrOpen, bulkhead.ErrFull).
		WithMaxAttempts(maxAttempts).
		WithDelayFunc(func(exec failsafe.ExecutionAttempt[any]) time.Duration {
			ceiling := min(maxDelay, baseDelay<<min(exec.Retries()-1, 30))
			return time.Duration(rand.Float64() * float64(ceiling))
		}).
		WithBudget(budget.NewBuilder().WithMaxRate(budgetRatio).Build()).
		ReturnLastFailure().
		Build()
	cb := circuitbreaker.NewBuilder[any]().
		HandleIf(func(_ any, err error) bool {
			return err != nil && provider.BreakerOutcome(err) == resilience.Failure
		}).
		WithFailureRateThreshold(breakerRatio, breakerMinCalls, breakerWindow).
		WithDelay(breakerOpen).
		WithSuccessThreshold(halfOpenProbes).
		Build()
	executor := failsafe.With[any](bh, rp, cb)
	return func(ctx context.Context) error {
		// The closure passes ctx itself: no policy here derives a
		// context (there is no timeout policy), so exec.Context() would
		// be the same ctx, for one more copy per call.
		return executor.WithContext(ctx).Run(func() error { return noop(ctx) })
	}
}

// Serial benchmarks call, one call at a time.
func Serial(call func(context.Context) error) func(*testing.B) {
	return func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if err := call(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// Parallel benchmarks call from GOMAXPROCS goroutines at once, which is
// where the locks of a bulkhead or a breaker show.
func Parallel(call func(context.Context) error) func(*testing.B) {
	return func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
}

// Modes returns the ways each composition is benchmarked, by
// sub-benchmark name.
func Modes() []Mode {
	return []Mode{{"serial", Serial}, {"parallel", Parallel}}
}

// A Mode turns a call into a benchmark.
type Mode struct {
	Name  string
	Bench func(call func(context.Context) error) func(*testing.B)
}
