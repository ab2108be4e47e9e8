package provider_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
)

func newClient(t *testing.T, url string, timeout time.Duration) *provider.Client {
	t.Helper()
	c, err := provider.NewClient(provider.Config{BaseURL: url, AttemptTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func startFake(t *testing.T) (*fakeprovider.Provider, *provider.Client) {
	t.Helper()
	fake, url := fakeprovider.Start(t)
	return fake, newClient(t, url, 2*time.Second)
}

func charge(key string, amount int64) provider.ChargeRequest {
	return provider.ChargeRequest{IdempotencyKey: key, Amount: amount, Currency: "usd", Reference: key}
}

func TestCharge_SucceedsAndReplaysByKey(t *testing.T) {
	fake, c := startFake(t)
	ctx := context.Background()
	first, err := c.Charge(ctx, charge("pay_1", 1000))
	if err != nil || first.Status != provider.ChargeSucceeded || first.ID == "" || first.Amount != 1000 {
		t.Fatalf("Charge = %+v, %v", first, err)
	}
	again, err := c.Charge(ctx, charge("pay_1", 1000))
	if err != nil || again.ID != first.ID {
		t.Fatalf("retry with the same key = %+v, %v; want charge %s", again, err, first.ID)
	}
	if n := len(fake.Charges()); n != 1 {
		t.Errorf("ledger has %d charges, want 1", n)
	}
}

func TestCharge_DeclineIsAnAnswerNotAnError(t *testing.T) {
	_, c := startFake(t)
	ch, err := c.Charge(context.Background(), charge("pay_d", 1402))
	if err != nil {
		t.Fatalf("a decline returned an error: %v", err)
	}
	if ch.Status != provider.ChargeDeclined || ch.Code != "card_declined" || ch.ID == "" {
		t.Errorf("declined charge = %+v", ch)
	}
}

func TestCharge_ClassifiesFailures(t *testing.T) {
	// A port nothing listens on: the dial fails, nothing is sent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name        string
		setup       func(t *testing.T) (url string, timeout time.Duration)
		ctx         func() (context.Context, context.CancelFunc)
		want        error
		wantStatus  int
		wantTimeout bool
		wantRetry   time.Duration
		wantCause   error
	}{
		{
			name:  "connection refused is not sent",
			setup: func(*testing.T) (string, time.Duration) { return closedURL, time.Second },
			want:  provider.ErrNotSent,
		},
		{
			name: "503 is unknown and carries Retry-After",
			setup: func(t *testing.T) (string, time.Duration) {
				fake, srv := fakeprovider.Start(t)
				if err := fake.SetFaults(fakeprovider.Faults{ErrorRate: 1}); err != nil {
					t.Fatal(err)
				}
				return srv, time.Second
			},
			want: provider.ErrOutcomeUnknown, wantStatus: 503, wantRetry: time.Second,
		},
		{
			name: "500 after charging is unknown",
			setup: func(t *testing.T) (string, time.Duration) {
				fake, srv := fakeprovider.Start(t)
				if err := fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 1}); err != nil {
					t.Fatal(err)
				}
				return srv, time.Second
			},
			want: provider.ErrOutcomeUnknown, wantStatus: 500,
		},
		{
			name: "attempt timeout is unknown and marked as a timeout",
			setup: func(t *testing.T) (string, time.Duration) {
				fake, srv := fakeprovider.Start(t)
				if err := fake.SetFaults(fakeprovider.Faults{LatencyMS: 2000}); err != nil {
					t.Fatal(err)
				}
				return srv, 50 * time.Millisecond
			},
			want: provider.ErrOutcomeUnknown, wantTimeout: true,
		},
		{
			name: "caller cancellation is reported as the caller's",
			setup: func(t *testing.T) (string, time.Duration) {
				fake, srv := fakeprovider.Start(t)
				if err := fake.SetFaults(fakeprovider.Faults{LatencyMS: 2000}); err != nil {
					t.Fatal(err)
				}
				return srv, 5 * time.Second
			},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			want: provider.ErrOutcomeUnknown, wantCause: context.DeadlineExceeded,
		},
		{
			name: "garbage 201 is unknown: it may have charged",
			setup: func(t *testing.T) (string, time.Duration) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(http.StatusCreated)
					_, _ = w.Write([]byte("<html>"))
				}))
				t.Cleanup(srv.Close)
				return srv.URL, time.Second
			},
			want: provider.ErrOutcomeUnknown, wantStatus: 201,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, timeout := tt.setup(t)
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			_, err := newClient(t, url, timeout).Charge(ctx, charge("pay_x", 1000))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			other := provider.ErrNotSent
			if errors.Is(tt.want, provider.ErrNotSent) {
				other = provider.ErrOutcomeUnknown
			}
			if errors.Is(err, other) {
				t.Errorf("err matches both outcomes: %v", err)
			}
			var perr *provider.Error
			if !errors.As(err, &perr) {
				t.Fatalf("err is %T, want *provider.Error", err)
			}
			if perr.StatusCode != tt.wantStatus || perr.Timeout != tt.wantTimeout || perr.RetryAfter != tt.wantRetry {
				t.Errorf("status=%d timeout=%v retryAfter=%s; want %d %v %s",
					perr.StatusCode, perr.Timeout, perr.RetryAfter, tt.wantStatus, tt.wantTimeout, tt.wantRetry)
			}
			if tt.wantCause != nil && !errors.Is(err, tt.wantCause) {
				t.Errorf("err = %v, want it to wrap %v", err, tt.wantCause)
			}
		})
	}
}

func TestCharge_SendsThePaymentIDAsIdempotencyKey(t *testing.T) {
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Idempotency-Key"))
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"ch_1","status":"succeeded","amount":1,"currency":"usd","reference":"pay_7"}`))
	}))
	t.Cleanup(srv.Close)
	if _, err := newClient(t, srv.URL, time.Second).Charge(context.Background(), charge("pay_7", 1)); err != nil {
		t.Fatal(err)
	}
	if got.Load() != "pay_7" {
		t.Errorf("Idempotency-Key = %v, want pay_7", got.Load())
	}
}

func TestFindCharge(t *testing.T) {
	_, c := startFake(t)
	ctx := context.Background()
	if _, found, err := c.FindCharge(ctx, "pay_none"); err != nil || found {
		t.Fatalf("FindCharge of an unknown key: found=%v err=%v", found, err)
	}
	made, err := c.Charge(ctx, charge("pay_1", 1000))
	if err != nil {
		t.Fatal(err)
	}
	got, found, err := c.FindCharge(ctx, "pay_1")
	if err != nil || !found || got.ID != made.ID {
		t.Fatalf("FindCharge = %+v, %v, %v; want %s", got, found, err, made.ID)
	}
}

func TestNewClient_RejectsBadConfig(t *testing.T) {
	for _, cfg := range []provider.Config{
		{BaseURL: "not a url", AttemptTimeout: time.Second},
		{BaseURL: "http://ok", AttemptTimeout: 0},
	} {
		if _, err := provider.NewClient(cfg); err == nil {
			t.Errorf("NewClient(%+v) succeeded", cfg)
		}
	}
}

// Each charge and refund tells the provider when to give it up: the
// attempt's deadline, or the caller's if sooner.
func TestClient_SendsTheAttemptDeadlineAsExpiry(t *testing.T) {
	expiries := make(chan time.Time, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ExpiresAt time.Time `json:"expires_at"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Errorf("decode the request: %v", err)
		}
		expiries <- body.ExpiresAt
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"x_1","status":"succeeded"}`))
	}))
	t.Cleanup(srv.Close)
	const attempt = 2 * time.Second
	c := newClient(t, srv.URL, attempt)

	before := time.Now()
	if _, err := c.Charge(context.Background(), charge("pay_1", 1)); err != nil {
		t.Fatal(err)
	}
	if got := <-expiries; got.Before(before.Add(attempt)) || got.After(time.Now().Add(attempt)) {
		t.Errorf("charge expires at %v, want the attempt's deadline, %v after it was sent", got, attempt)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(time.Second))
	defer cancel()
	deadline, _ := ctx.Deadline()
	if _, err := c.Refund(ctx, provider.RefundRequest{IdempotencyKey: "re_1", Charge: "ch_1", Amount: 1}); err != nil {
		t.Fatal(err)
	}
	if got := <-expiries; !got.Equal(deadline.UTC()) {
		t.Errorf("refund expires at %v, want the caller's sooner deadline %v", got, deadline.UTC())
	}
}

// A request the provider refused as expired did nothing: for the caller it
// is as safe as one never sent, for a refund too (not a refusal to record).
func TestClient_AnExpiredRequestIsNotSent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte(`{"error":"request_expired","message":"too late"}`))
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, time.Second)
	if _, err := c.Charge(context.Background(), charge("pay_1", 1)); !errors.Is(err, provider.ErrNotSent) {
		t.Errorf("Charge = %v, want ErrNotSent", err)
	}
	r, err := c.Refund(context.Background(), provider.RefundRequest{IdempotencyKey: "re_1", Charge: "ch_1", Amount: 1})
	if !errors.Is(err, provider.ErrNotSent) || r.Status == provider.RefundRefused {
		t.Errorf("Refund = %+v, %v; want ErrNotSent, not a refusal", r, err)
	}
}
