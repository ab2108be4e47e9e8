package resilience

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var errRetryable = errors.New("retryable")

func retryAll(err error) Verdict { return Verdict{Retry: !errors.Is(err, errClient)} }

var defaultPolicy = RetryPolicy{
	MaxAttempts: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second,
	MaxRetryAfter: 5 * time.Second, AttemptTimeout: 300 * time.Millisecond,
}

// newTestRetrier returns a retrier with a budget too large to matter
// unless the test says otherwise.
func newTestRetrier(t *testing.T, p RetryPolicy, budget *RetryBudget, classify func(error) Verdict) *Retrier {
	t.Helper()
	reg := prometheus.NewRegistry()
	if budget == nil {
		budget = newBudget(t, reg, 1, 0, 1e9)
	}
	r, err := NewRetrier("dep", p, budget, classify, reg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newBudget(t *testing.T, reg prometheus.Registerer, ratio, perSecond, capacity float64) *RetryBudget {
	t.Helper()
	b, err := NewRetryBudget("dep", ratio, perSecond, capacity, reg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// attemptTimes runs Do with fn failing every time and returns when each
// attempt started, relative to the start.
func attemptTimes(ctx context.Context, r *Retrier, fail error) ([]time.Duration, error) {
	start := time.Now()
	var at []time.Duration
	err := r.Do(ctx, func(context.Context) error {
		at = append(at, time.Since(start))
		return fail
	})
	return at, err
}

func TestRetry_BackoffIsCappedExponentialWithFullJitter(t *testing.T) {
	p := defaultPolicy
	p.MaxAttempts = 7
	tests := []struct {
		name   string
		random float64
		want   []time.Duration // gaps between attempts
	}{
		// The top of the jitter range is the capped exponential itself.
		{"top of the range", 1, []time.Duration{100, 200, 400, 800, 1000, 1000}},
		{"middle of the range", 0.5, []time.Duration{50, 100, 200, 400, 500, 500}},
		{"bottom of the range", 0, []time.Duration{0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newTestRetrier(t, p, nil, retryAll).WithRandom(func() float64 { return tt.random })
				at, err := attemptTimes(context.Background(), r, errRetryable)
				if !errors.Is(err, errRetryable) || len(at) != p.MaxAttempts {
					t.Fatalf("%d attempts, err %v; want %d and the last error", len(at), err, p.MaxAttempts)
				}
				for i, want := range tt.want {
					if gap := at[i+1] - at[i]; gap != want*time.Millisecond {
						t.Errorf("wait before retry %d = %s, want %s", i+1, gap, want*time.Millisecond)
					}
				}
			})
		})
	}
}

func TestRetry_NeverStartsAnAttemptThatCannotFinishBeforeTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := defaultPolicy
		p.MaxAttempts = 100
		r := newTestRetrier(t, p, nil, retryAll).WithRandom(func() float64 { return 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		deadline, _ := ctx.Deadline()
		start := time.Now()
		var starts []time.Time
		err := r.Do(ctx, func(ctx context.Context) error {
			starts = append(starts, time.Now())
			time.Sleep(200 * time.Millisecond) // each attempt takes a while
			return errRetryable
		})
		if !errors.Is(err, errRetryable) {
			t.Fatalf("err = %v", err)
		}
		for i, s := range starts {
			if deadline.Sub(s) < p.AttemptTimeout {
				t.Errorf("attempt %d started %s before the deadline, less than the attempt timeout %s", i+1, deadline.Sub(s), p.AttemptTimeout)
			}
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("Do returned after %s, past the deadline", elapsed)
		}
		if len(starts) < 3 {
			t.Errorf("only %d attempts in 2s", len(starts))
		}
	})
}

func TestRetry_ReturnsAtOnceWhenCancelledWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := defaultPolicy
		p.BaseDelay, p.MaxDelay = time.Minute, time.Minute
		r := newTestRetrier(t, p, nil, retryAll).WithRandom(func() float64 { return 1 })
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		err := r.Do(ctx, func(context.Context) error { return errRetryable })
		if elapsed := time.Since(start); elapsed != time.Second {
			t.Errorf("Do returned %s after start, want exactly at the cancellation (1s)", elapsed)
		}
		if !errors.Is(err, context.Canceled) || !errors.Is(err, errRetryable) {
			t.Errorf("err = %v; want both the cancellation and the last attempt's error", err)
		}
	})
}

func TestRetry_GivesUpOnErrorsNotWorthRetrying(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"classified as not retryable", errClient},
		{"breaker open", fmt.Errorf("wrapped: %w", ErrBreakerOpen)},
		{"bulkhead full", fmt.Errorf("wrapped: %w", ErrBulkheadFull)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// The classifier would retry breaker-open and bulkhead-full:
				// the retrier must refuse anyway.
				r := newTestRetrier(t, defaultPolicy, nil, retryAll)
				at, err := attemptTimes(context.Background(), r, tt.err)
				if len(at) != 1 || !errors.Is(err, tt.err) {
					t.Fatalf("%d attempts, err %v; want 1 and the error", len(at), err)
				}
			})
		})
	}
}

func TestRetry_HonoursRetryAfterUpToItsCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hint := func(d time.Duration) func(error) Verdict {
			return func(error) Verdict { return Verdict{Retry: true, After: d} }
		}
		r := newTestRetrier(t, defaultPolicy, nil, hint(2*time.Second)).WithRandom(func() float64 { return 0 })
		at, _ := attemptTimes(context.Background(), r, errRetryable)
		if len(at) != 3 || at[1] != 2*time.Second || at[2] != 4*time.Second {
			t.Errorf("attempts at %v, want 0s, 2s, 4s (Retry-After: 2)", at)
		}

		r = newTestRetrier(t, defaultPolicy, nil, hint(time.Minute))
		at, _ = attemptTimes(context.Background(), r, errRetryable)
		if len(at) != 1 {
			t.Errorf("%d attempts with Retry-After beyond MaxRetryAfter, want 1 (give up, do not retry early)", len(at))
		}
	})
}

// TestRetryBudget_CapsAmplification measures attempts per call against a
// dependency that always fails, with and without the shared budget.
func TestRetryBudget_CapsAmplification(t *testing.T) {
	const calls = 1000
	measure := func(t *testing.T, budget *RetryBudget) float64 {
		r := newTestRetrier(t, defaultPolicy, budget, retryAll).WithRandom(func() float64 { return 0 })
		var mu sync.Mutex
		attempts := 0
		var wg sync.WaitGroup
		for range calls {
			wg.Go(func() {
				_ = r.Do(context.Background(), func(context.Context) error {
					mu.Lock()
					attempts++
					mu.Unlock()
					return errRetryable
				})
			})
		}
		wg.Wait()
		return float64(attempts) / calls
	}
	synctest.Test(t, func(t *testing.T) {
		// Zero jitter: no time passes, so the floor adds nothing and
		// what is measured is the ratio alone, plus the starting tokens.
		unbudgeted := measure(t, nil)
		budgeted := measure(t, newBudget(t, prometheus.NewRegistry(), 0.2, 5, 10))
		t.Logf("attempts per call against an always-failing dependency: %.3f without a budget, %.3f with one (ratio 0.2, capacity 10)", unbudgeted, budgeted)
		if unbudgeted != float64(defaultPolicy.MaxAttempts) {
			t.Errorf("without a budget: %.3f attempts per call, want %d", unbudgeted, defaultPolicy.MaxAttempts)
		}
		if budgeted > 1.25 {
			t.Errorf("with the budget: %.3f attempts per call, want ≤ 1.25", budgeted)
		}
	})
}

func TestRetryBudget_FloorRefillsOverTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		b := newBudget(t, reg, 0, 2, 2) // no ratio: only the floor of 2/s
		for i := range 2 {
			if !b.withdraw() {
				t.Fatalf("retry %d refused by a full budget of 2", i+1)
			}
		}
		if b.withdraw() {
			t.Fatal("an empty budget allowed a retry")
		}
		time.Sleep(500 * time.Millisecond)
		if !b.withdraw() {
			t.Fatal("half a second at 2/s did not refill a token")
		}
		if got := metricValue(t, reg, "payservice_retry_budget_exhausted_total", nil); got != 1 {
			t.Errorf("payservice_retry_budget_exhausted_total = %v, want 1", got)
		}
	})
}
