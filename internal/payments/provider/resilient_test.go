package provider_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

type resilientSettings struct {
	workers, queue int
	egressRate     float64 // provider calls a second
	egressBurst    int
	breaker        resilience.BreakerSettings
	policy         resilience.RetrySettings
}

func defaults() resilientSettings {
	return resilientSettings{
		workers: 4, queue: 4,
		egressRate: 1000, egressBurst: 100,
		breaker: resilience.BreakerSettings{
			Name: "provider", Window: 10 * time.Second, MinRequests: 4, FailureRatio: 0.5,
			OpenTimeout: time.Minute, HalfOpenProbes: 1,
		},
		policy: resilience.RetrySettings{
			MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond,
			MaxRetryAfter: 2 * time.Second, AttemptTimeout: time.Second,
		},
	}
}

func newResilient(t *testing.T, url string, s resilientSettings) (*provider.Resilient, *resilience.Bulkhead) {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	client, err := provider.NewClient(provider.Config{BaseURL: url, AttemptTimeout: s.policy.AttemptTimeout})
	must(err)
	breaker, err := resilience.NewBreaker(s.breaker, provider.BreakerOutcome, reg, log)
	must(err)
	budget, err := resilience.NewRetryBudget(resilience.BudgetSettings{Name: "provider", Ratio: 1, Capacity: 1000}, reg)
	must(err)
	retrier, err := resilience.NewRetrier(s.policy, budget, provider.RetryVerdict, reg)
	must(err)
	egress, err := resilience.NewEgressLimiter(resilience.EgressSettings{Name: "provider", PerSecond: s.egressRate, Burst: s.egressBurst}, reg)
	must(err)
	bulkhead, err := resilience.NewBulkhead(resilience.BulkheadSettings{Name: "provider", Concurrency: s.workers, Queue: s.queue}, reg)
	must(err)
	t.Cleanup(func() { bulkhead.Close(context.Background()) })
	return provider.NewResilient(client, resilience.Protections{
		Bulkhead: bulkhead, Egress: egress, Retrier: retrier, Breaker: breaker,
	}), bulkhead
}

// countedFakeProvider serves a fake provider, counting the requests that
// reach it.
func countedFakeProvider(t *testing.T) (*fakeprovider.Provider, string, *atomic.Int64) {
	t.Helper()
	fake := fakeprovider.New()
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return fake, srv.URL, &requests
}

// sequence returns a random source yielding values in order, then 0.99.
func sequence(values ...float64) func() float64 {
	var mu sync.Mutex
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		if len(values) == 0 {
			return 0.99
		}
		v := values[0]
		values = values[1:]
		return v
	}
}

func TestResilient_RetriesAnAmbiguousFailureIntoOneCharge(t *testing.T) {
	// The first attempt charges and then answers 500; the retry, with the
	// same key, gets the recorded charge back.
	fake, url := fakeprovider.Start(t, fakeprovider.WithRandom(sequence(0)))
	if err := fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 0.5}); err != nil {
		t.Fatal(err)
	}
	r, _ := newResilient(t, url, defaults())
	ch, err := r.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: "pay_1", Amount: 1000, Currency: "usd", Reference: "pay_1"})
	if err != nil || ch.Status != provider.ChargeSucceeded {
		t.Fatalf("Charge = %+v, %v", ch, err)
	}
	if n := len(fake.Charges()); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
}

func TestResilient_OpenBreakerFailsFastAsNotSent(t *testing.T) {
	fake, url, requests := countedFakeProvider(t)
	if err := fake.SetFaults(fakeprovider.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	s := defaults()
	s.policy.MaxRetryAfter = 0 // the fake's Retry-After: 1 ends each call after one attempt
	r, _ := newResilient(t, url, s)
	ctx := context.Background()
	for i := range 4 { // trips the breaker: every attempt fails
		_, _ = r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: "pay_" + string(rune('a'+i)), Amount: 1, Currency: "usd"})
	}
	before := requests.Load()
	_, err := r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: "pay_x", Amount: 1, Currency: "usd"})
	if !errors.Is(err, resilience.ErrBreakerOpen) || !errors.Is(err, provider.ErrNotSent) {
		t.Fatalf("err = %v, want ErrBreakerOpen and ErrNotSent", err)
	}
	if errors.Is(err, provider.ErrOutcomeUnknown) {
		t.Errorf("a call refused by the breaker also claims an unknown outcome: %v", err)
	}
	// Fast, without a clock: it neither waited for the provider nor for a
	// retry (breaker-open is never retried, see the retrier's tests).
	if n := requests.Load() - before; n != 0 {
		t.Errorf("an open breaker let %d requests reach the provider", n)
	}
}

func TestResilient_NoTimeForAnAttemptIsNotSent(t *testing.T) {
	// What a request has left after queueing in the bulkhead, say: less
	// than one attempt timeout. An attempt now would be cut short by the
	// caller's deadline, which the breaker does not count against a hung
	// provider, and would leave the payment's outcome unknown.
	_, url, requests := countedFakeProvider(t)
	s := defaults()
	r, _ := newResilient(t, url, s)
	ctx, cancel := context.WithTimeout(context.Background(), s.policy.AttemptTimeout/2)
	defer cancel()
	_, err := r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: "pay_1", Amount: 1, Currency: "usd"})
	if !errors.Is(err, resilience.ErrDeadlineTooClose) || !errors.Is(err, provider.ErrNotSent) {
		t.Fatalf("err = %v, want ErrDeadlineTooClose and ErrNotSent", err)
	}
	if errors.Is(err, provider.ErrOutcomeUnknown) {
		t.Errorf("err = %v also claims an unknown outcome", err)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests reached the provider, want none", n)
	}
}

func TestResilient_WaitsForQuotaOnlyWhileAnAttemptCouldFollow(t *testing.T) {
	attempt := defaults().policy.AttemptTimeout // 1s
	tests := []struct {
		name string
		// Provider calls a second, in bursts of one: the first call takes
		// the only token, and the second call's is 1/rate later.
		rate float64
		// The second call's deadline. Waiting for its token is worth it
		// only if a whole attempt timeout is left after the wait.
		deadline  time.Duration
		wantErr   error // nil: the second call succeeds
		wantCalls int64 // requests that reach the provider, the first call's included
	}{
		{
			name:      "waits for a token that leaves time for an attempt",
			rate:      10, // the token is 100ms away
			deadline:  100*time.Millisecond + attempt*3/2,
			wantErr:   nil,
			wantCalls: 2,
		},
		{
			// The caller's deadline alone would let the call wait; what an
			// attempt needs after the wait leaves it none.
			name:      "refused at once when an attempt could not follow the token",
			rate:      0.5, // the token is 2s away
			deadline:  2*time.Second + attempt/2,
			wantErr:   resilience.ErrRateLimited,
			wantCalls: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, url, requests := countedFakeProvider(t)
			s := defaults()
			s.egressRate, s.egressBurst = tt.rate, 1
			r, _ := newResilient(t, url, s)
			tokenWait := time.Duration(float64(time.Second) / tt.rate)

			first := time.Now() // no later than the first call takes its token
			if _, err := r.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: "pay_1", Amount: 1, Currency: "usd"}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tt.deadline)
			defer cancel()
			second := time.Now()
			_, err := r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: "pay_2", Amount: 1, Currency: "usd"})
			took := time.Since(second)

			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v, want the call made after waiting for quota", err)
				}
				// The token cannot come sooner than tokenWait after the
				// first call's (a 10% margin for the limiter's rounding).
				if since := time.Since(first); since < tokenWait*9/10 {
					t.Errorf("the second call ended %s after the first began, want ≥ %s: it did not wait for quota", since, tokenWait)
				}
			} else {
				if !errors.Is(err, tt.wantErr) || !errors.Is(err, provider.ErrNotSent) {
					t.Fatalf("err = %v, want %v and ErrNotSent", err, tt.wantErr)
				}
				// At once: not after waiting for a token no attempt could use.
				if took > tokenWait/10 {
					t.Errorf("refused after %s, want far sooner than the %s wait for quota", took, tokenWait)
				}
			}
			if n := requests.Load(); n != tt.wantCalls {
				t.Errorf("%d requests reached the provider, want %d", n, tt.wantCalls)
			}
		})
	}
}

func TestResilient_AnEarlierSentAttemptKeepsTheOutcomeUnknown(t *testing.T) {
	// Attempt 1 reaches the provider (503: for all we know it charged);
	// it also trips the breaker, so attempt 2 is refused unsent. The
	// call must still say "unknown", or the payment would be dropped.
	fake, url := fakeprovider.Start(t)
	if err := fake.SetFaults(fakeprovider.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	s := defaults()
	s.breaker.MinRequests = 1
	r, _ := newResilient(t, url, s)
	_, err := r.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: "pay_1", Amount: 1, Currency: "usd"})
	if !errors.Is(err, provider.ErrOutcomeUnknown) {
		t.Fatalf("err = %v, want ErrOutcomeUnknown", err)
	}
	if errors.Is(err, provider.ErrNotSent) {
		t.Fatalf("err = %v also matches ErrNotSent: the payment could be dropped after a possible charge", err)
	}
}

func TestResilient_FullBulkheadFailsFastAsNotSent(t *testing.T) {
	_, url := fakeprovider.Start(t)
	s := defaults()
	s.workers, s.queue = 1, 0
	r, bulkhead := newResilient(t, url, s)
	release := make(chan struct{})
	occupied := make(chan struct{})
	go func() {
		_ = bulkhead.Submit(context.Background(), func(context.Context) error {
			close(occupied)
			<-release
			return nil
		})
	}()
	<-occupied
	defer close(release)

	_, err := r.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: "pay_1", Amount: 1, Currency: "usd"})
	if !errors.Is(err, resilience.ErrBulkheadFull) || !errors.Is(err, provider.ErrNotSent) {
		t.Fatalf("err = %v, want ErrBulkheadFull and ErrNotSent", err)
	}
}

func TestResilient_DeclinesAreNotRetriedAndDoNotTrip(t *testing.T) {
	fake, url := fakeprovider.Start(t)
	r, _ := newResilient(t, url, defaults())
	for i := range 10 {
		key := "pay_d" + string(rune('0'+i))
		ch, err := r.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: key, Amount: 402, Currency: "usd"})
		if err != nil || ch.Status != provider.ChargeDeclined {
			t.Fatalf("decline %d: %+v, %v", i, ch, err)
		}
	}
	if n := len(fake.Charges()); n != 10 {
		t.Errorf("%d ledger entries for 10 declines", n)
	}
}

func TestClassifiers(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		wantOutcome resilience.Outcome
		wantRetry   bool
	}{
		{"5xx", &provider.Error{StatusCode: 503, Sent: true}, resilience.Failure, true},
		{"timeout", &provider.Error{Timeout: true, Sent: true}, resilience.Failure, true},
		{"connection refused", &provider.Error{}, resilience.Failure, true},
		{"429", &provider.Error{StatusCode: 429, Sent: true}, resilience.Success, true},
		{"400", &provider.Error{StatusCode: 400, Sent: true}, resilience.Success, false},
		{"422 key reused", &provider.Error{StatusCode: 422, Sent: true}, resilience.Success, false},
		{"garbled 201", &provider.Error{StatusCode: 201, Sent: true}, resilience.Failure, false},
	}
	for _, tt := range tests {
		if got := provider.BreakerOutcome(tt.err); got != tt.wantOutcome {
			t.Errorf("%s: BreakerOutcome = %v, want %v", tt.name, got, tt.wantOutcome)
		}
		if got := provider.RetryVerdict(tt.err).Retry; got != tt.wantRetry {
			t.Errorf("%s: RetryVerdict.Retry = %v, want %v", tt.name, got, tt.wantRetry)
		}
	}
}
