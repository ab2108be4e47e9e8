package resilience

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var errRetryable = errors.New("retryable")

func retryAll(err error) Verdict { return Verdict{Retry: !errors.Is(err, errClient)} }

var defaultPolicy = RetrySettings{
	Name:        "dep",
	MaxAttempts: 3, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second,
	MaxRetryAfter: 5 * time.Second, AttemptTimeout: 300 * time.Millisecond,
}

// newTestRetrier returns a retrier with a budget too large to matter
// unless the test says otherwise.
func newTestRetrier(t *testing.T, p RetrySettings, budget *RetryBudget, classify func(error) Verdict) *Retrier {
	t.Helper()
	reg := prometheus.NewRegistry()
	if budget == nil {
		budget = newBudget(t, reg, 1, 0, 1e9)
	}
	r, err := NewRetrier(p, budget, classify, reg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newBudget(t *testing.T, reg prometheus.Registerer, ratio, perSecond, capacity float64) *RetryBudget {
	t.Helper()
	b, err := NewRetryBudget(BudgetSettings{Name: "dep", Ratio: ratio, MinPerSecond: perSecond, Capacity: int(capacity)}, reg)
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
		p.AttemptTimeout = 250 * time.Millisecond
		// No jitter: the waits are 100, 200, 400ms..., and with attempts of
		// 200ms the attempts would start at 0, 300, 700 and 1300ms. With
		// the deadline at 1450ms the fourth would have only 150ms left.
		r := newTestRetrier(t, p, nil, retryAll).WithRandom(func() float64 { return 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 1450*time.Millisecond)
		defer cancel()
		deadline, _ := ctx.Deadline()
		start := time.Now()
		var starts []time.Duration
		err := r.Do(ctx, func(ctx context.Context) error {
			starts = append(starts, time.Since(start))
			time.Sleep(200 * time.Millisecond)
			return errRetryable
		})
		if !errors.Is(err, errRetryable) {
			t.Fatalf("err = %v, want the last attempt's error", err)
		}
		for i, s := range starts {
			if left := deadline.Sub(start.Add(s)); left < p.AttemptTimeout {
				t.Errorf("attempt %d started with %s left before the deadline, less than the attempt timeout %s", i+1, left, p.AttemptTimeout)
			}
		}
		if want := []time.Duration{0, 300 * time.Millisecond, 700 * time.Millisecond}; !slices.Equal(starts, want) {
			t.Errorf("attempts started at %v, want %v", starts, want)
		}
		// Not after waiting 400ms for a retry that could not be made.
		if elapsed := time.Since(start); elapsed != 900*time.Millisecond {
			t.Errorf("Do returned %s after the start, want 900ms, when the third attempt failed", elapsed)
		}
	})
}

func TestRetry_StartsTheFirstAttemptOnlyWithTimeForIt(t *testing.T) {
	tests := []struct {
		name    string
		left    time.Duration // of the caller's deadline, when it calls Do
		wantRun bool
	}{
		{"a whole attempt timeout left", defaultPolicy.AttemptTimeout, true},
		{"a millisecond less", defaultPolicy.AttemptTimeout - time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg := prometheus.NewRegistry()
				r, err := NewRetrier(defaultPolicy, newBudget(t, reg, 1, 0, 1e9), retryAll, reg)
				if err != nil {
					t.Fatal(err)
				}
				// What a caller has left after, say, a wait in a queue.
				ctx, cancel := context.WithTimeout(context.Background(), tt.left)
				defer cancel()
				ran := false
				err = r.Do(ctx, func(context.Context) error { ran = true; return nil })
				if ran != tt.wantRun {
					t.Fatalf("attempt made: %v, want %v", ran, tt.wantRun)
				}
				if tt.wantRun {
					return
				}
				if !errors.Is(err, ErrDeadlineTooClose) {
					t.Errorf("err = %v, want ErrDeadlineTooClose", err)
				}
				if got := metricValue(t, reg, "retry_attempts_total", map[string]string{"outcome": "not_started"}); got != 1 {
					t.Errorf("not_started attempts = %v, want 1", got)
				}
			})
		})
	}
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
// dependency that always fails, with and without the shared budget, all at
// one instant: the limit at high call rates, where the budget's floor adds
// next to nothing. TestRetryBudget_AmplificationDependsOnTheCallRate
// measures what the floor adds at lower rates.
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

// TestRetryBudget_AmplificationDependsOnTheCallRate measures attempts per
// call against a dependency that always fails, with time passing between
// calls as it does in production, so that the budget's floor refills. The
// budget promises min(MaxAttempts, 1 + ratio + floor/rate), plus the
// capacity saved before the outage spread over the calls: the floor
// dominates at low rates.
func TestRetryBudget_AmplificationDependsOnTheCallRate(t *testing.T) {
	const (
		ratio, floor, capacity = 0.2, 5, 10 // the RETRY_BUDGET_* defaults
		period                 = 10 * time.Second
	)
	for _, perSecond := range []float64{200, 20, 2} {
		t.Run(fmt.Sprintf("%g calls a second", perSecond), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				budget := newBudget(t, prometheus.NewRegistry(), ratio, floor, capacity)
				r := newTestRetrier(t, defaultPolicy, budget, retryAll).WithRandom(func() float64 { return 0 })
				calls := int(perSecond * period.Seconds())
				attempts := 0
				for range calls {
					_ = r.Do(context.Background(), func(context.Context) error { attempts++; return errRetryable })
					time.Sleep(time.Duration(float64(time.Second) / perSecond))
				}
				got := float64(attempts) / float64(calls)
				want := min(float64(defaultPolicy.MaxAttempts), 1+ratio+floor/perSecond+capacity/float64(calls))
				t.Logf("%g calls/s for %s: %.3f attempts per call (min(%d, 1 + %g + %g/%g + %g/%d) = %.3f)",
					perSecond, period, got, defaultPolicy.MaxAttempts, ratio, float64(floor), perSecond, float64(capacity), calls, want)
				if math.Abs(got-want) > 0.01 {
					t.Errorf("%.3f attempts per call, want %.3f", got, want)
				}
				if perSecond >= 200 && got > 1.25 {
					t.Errorf("%.3f attempts per call at %g calls/s, want ≤ 1.25", got, perSecond)
				}
			})
		})
	}
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
		if got := metricValue(t, reg, "retry_budget_exhausted_total", nil); got != 1 {
			t.Errorf("retry_budget_exhausted_total = %v, want 1", got)
		}
	})
}
