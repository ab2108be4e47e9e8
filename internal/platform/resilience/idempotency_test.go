package resilience

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestFingerprint_IgnoresKeyOrderAndWhitespaceOnly(t *testing.T) {
	base, err := Fingerprint("POST", "/v1/payments", "client_a", []byte(`{"amount":1,"meta":{"a":"x","b":"y"}}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, route, client, body string
		same                              bool
	}{
		{"reordered and re-spaced", "POST", "/v1/payments", "client_a", " {\n\"meta\": {\"b\":\"y\",\"a\":\"x\"}, \"amount\" : 1 }", true},
		{"other amount", "POST", "/v1/payments", "client_a", `{"amount":2,"meta":{"a":"x","b":"y"}}`, false},
		{"other client", "POST", "/v1/payments", "client_b", `{"amount":1,"meta":{"a":"x","b":"y"}}`, false},
		{"other route", "POST", "/v1/refunds", "client_a", `{"amount":1,"meta":{"a":"x","b":"y"}}`, false},
		{"other method", "PUT", "/v1/payments", "client_a", `{"amount":1,"meta":{"a":"x","b":"y"}}`, false},
		{"number spelt otherwise", "POST", "/v1/payments", "client_a", `{"amount":1.0,"meta":{"a":"x","b":"y"}}`, false},
	}
	for _, tt := range tests {
		got, err := Fingerprint(tt.method, tt.route, tt.client, []byte(tt.body))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if (got == base) != tt.same {
			t.Errorf("%s: same fingerprint = %v, want %v", tt.name, got == base, tt.same)
		}
	}
	for _, bad := range []string{``, `{"a":`, `{} {}`} {
		if _, err := Fingerprint("POST", "/", "c", []byte(bad)); err == nil {
			t.Errorf("Fingerprint(%q) succeeded, want an error", bad)
		}
	}
}

func newStore(t *testing.T, url string, reg prometheus.Registerer) (*IdempotencyStore, *redis.Client) {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.MaxRetries = -1
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	breaker, err := NewBreaker(BreakerSettings{
		Name: "redis", Window: 10 * time.Second, MinRequests: 3, FailureRatio: 0.5, OpenTimeout: time.Minute, HalfOpenProbes: 1,
	}, RedisOutcome, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return NewIdempotencyStore(rdb, "test", time.Hour, 200*time.Millisecond, breaker), rdb
}

func TestIdempotencyStore_AStaleOwnerCannotReleaseTheNewOwnersLock(t *testing.T) {
	store, rdb := newStore(t, testenv.RedisURL(t), prometheus.NewRegistry())
	ctx := context.Background()

	old, err := store.Claim(ctx, "client_a", "key", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Claim(ctx, "client_a", "key", time.Minute); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("a second claim while held: %v, want ErrLeaseHeld", err)
	}
	if _, err := store.Claim(ctx, "client_b", "key", time.Minute); err != nil {
		t.Fatalf("another client's claim of the same key: %v", err)
	}

	// The old owner's lease expires (deleting the lock is what expiry
	// does, without a sleep racing a short TTL on a loaded machine).
	if err := rdb.Del(ctx, store.key("client_a", "key", "lock")).Err(); err != nil {
		t.Fatal(err)
	}
	current, err := store.Claim(ctx, "client_a", "key", time.Minute)
	if err != nil {
		t.Fatalf("claim after expiry: %v", err)
	}
	if err := store.Release(ctx, old); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("the old owner's Release: %v, want ErrLeaseLost", err)
	}
	if _, err := store.Claim(ctx, "client_a", "key", time.Minute); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("the new owner's lock is gone after the old owner's release: %v", err)
	}
	if err := store.Release(ctx, current); err != nil {
		t.Errorf("the owner's Release: %v", err)
	}
	if _, err := store.Claim(ctx, "client_a", "key", time.Minute); err != nil {
		t.Errorf("claim after release: %v", err)
	}
}

func TestIdempotencyStore_RedisDownFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "redis://" + ln.Addr().String() + "/0"
	ln.Close()
	store, _ := newStore(t, down, prometheus.NewRegistry())
	ctx := context.Background()
	for range 3 {
		if _, err := store.Claim(ctx, "c", "k", time.Second); err == nil || errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("Claim against a closed port: %v, want an error", err)
		}
	}
	// ErrBreakerOpen comes from the breaker itself, before any dial: the
	// caller learns at once instead of paying a timeout.
	_, _, err = store.Response(ctx, "c", "k")
	if !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("after repeated failures: %v, want ErrBreakerOpen", err)
	}
}

// idemHarness is the middleware around a handler the test controls.
type idemHarness struct {
	srv     *httptest.Server
	calls   chan struct{} // one value per handler call
	release chan struct{} // closed to let blocked handlers finish
	status  int           // what the handler answers
	mu      sync.Mutex
	reg     *prometheus.Registry
}

func newIdemHarness(t *testing.T, redisURL string, status int) *idemHarness {
	t.Helper()
	h := &idemHarness{calls: make(chan struct{}, 100), release: make(chan struct{}), status: status, reg: prometheus.NewRegistry()}
	close(h.release) // not blocking unless a test replaces it
	store, _ := newStore(t, redisURL, h.reg)
	metrics, err := NewIdempotencyMetrics(h.reg)
	if err != nil {
		t.Fatal(err)
	}
	mw := NewIdempotency(IdempotencyConfig{
		Store: store, Metrics: metrics, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Lease: time.Minute, MaxBody: 1024, Route: "/things",
		Scope:    func(r *http.Request) string { return r.Header.Get("Client") },
		ValidKey: func(k string) bool { return k != "" },
		Valid:    func(body []byte) bool { return !bytes.Contains(body, []byte("invalid")) },
		Final:    func(status int) bool { return status == 201 },
		InFlight: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(409) },
		Mismatch: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(422) },
	}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.calls <- struct{}{}
		h.mu.Lock()
		release, status := h.release, h.status
		h.mu.Unlock()
		<-release
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", r.Header.Get("X-Request-Id"))
		w.WriteHeader(status)
		w.Write([]byte(`{"echo":` + string(body) + `,"request":"` + r.Header.Get("X-Request-Id") + `"}`))
	}))
	h.srv = httptest.NewServer(mw)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *idemHarness) post(t *testing.T, key, body, requestID string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL, strings.NewReader(body))
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Client", "client_a")
	req.Header.Set("X-Request-Id", requestID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func TestIdempotencyMiddleware_ReplaysFinalResponsesByteForByte(t *testing.T) {
	h := newIdemHarness(t, testenv.RedisURL(t), 201)
	first, firstBody := h.post(t, "k", `{"a":1,"b":2}`, "req-1")
	replay, replayBody := h.post(t, "k", `{ "b":2, "a":1 }`, "req-2")
	if first.StatusCode != 201 || replay.StatusCode != 201 {
		t.Fatalf("statuses %d, %d", first.StatusCode, replay.StatusCode)
	}
	if replayBody != firstBody || replay.Header.Get("Idempotent-Replayed") != "true" || replay.Header.Get("Content-Type") != "application/json" {
		t.Errorf("replay %q %v; want the first body %q, replayed, same content type", replayBody, replay.Header, firstBody)
	}
	if first.Header.Get("Idempotent-Replayed") != "" {
		t.Error("the first answer is marked replayed")
	}
	if n := len(h.calls); n != 1 {
		t.Errorf("the handler ran %d times, want 1", n)
	}
	if mismatch, _ := h.post(t, "k", `{"a":1,"b":3}`, "req-3"); mismatch.StatusCode != 422 {
		t.Errorf("the key with another body: %d, want 422", mismatch.StatusCode)
	}
	if got := metricValue(t, h.reg, "idempotency_total", map[string]string{"outcome": "replay"}); got != 1 {
		t.Errorf("replay outcomes %v, want 1", got)
	}
}

func TestIdempotencyMiddleware_RefusesDuplicatesInFlight(t *testing.T) {
	h := newIdemHarness(t, testenv.RedisURL(t), 201)
	h.mu.Lock()
	h.release = make(chan struct{})
	release := h.release
	h.mu.Unlock()

	done := make(chan int)
	go func() {
		resp, _ := h.post(t, "k", `{"a":1}`, "first")
		done <- resp.StatusCode
	}()
	<-h.calls // the first is in the handler
	if resp, _ := h.post(t, "k", `{"a":1}`, "dup"); resp.StatusCode != 409 {
		t.Errorf("duplicate in flight: %d, want 409", resp.StatusCode)
	}
	if resp, _ := h.post(t, "k", `{"a":2}`, "other"); resp.StatusCode != 409 {
		t.Errorf("another body in flight: %d, want 409 (in flight comes first)", resp.StatusCode)
	}
	close(release)
	if status := <-done; status != 201 {
		t.Fatalf("first: %d", status)
	}
	if resp, _ := h.post(t, "k", `{"a":2}`, "after"); resp.StatusCode != 422 {
		t.Errorf("another body after completion: %d, want 422", resp.StatusCode)
	}
}

func TestIdempotencyMiddleware_DoesNotStoreNonFinalAnswers(t *testing.T) {
	h := newIdemHarness(t, testenv.RedisURL(t), 400)
	if resp, _ := h.post(t, "k", `{"a":1}`, "1"); resp.StatusCode != 400 {
		t.Fatal(resp.StatusCode)
	}
	h.mu.Lock()
	h.status = 201
	h.mu.Unlock()
	if resp, _ := h.post(t, "k", `{"a":1}`, "2"); resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("after a 400 the key must stay usable: %d %v", resp.StatusCode, resp.Header)
	}
	if n := len(h.calls); n != 2 {
		t.Errorf("the handler ran %d times, want 2", n)
	}
}

func TestIdempotencyMiddleware_InvalidRequestsGoStraightToTheHandler(t *testing.T) {
	h := newIdemHarness(t, testenv.RedisURL(t), 201)
	if resp, _ := h.post(t, "k", `{"a":1}`, "1"); resp.StatusCode != 201 {
		t.Fatal(resp.StatusCode)
	}
	// Not a mismatch (422) nor a replay: the handler refuses it as
	// invalid, exactly as it would with Redis down.
	resp, _ := h.post(t, "k", `{"invalid":1}`, "2")
	if resp.Header.Get("Idempotent-Replayed") != "" || len(h.calls) != 2 {
		t.Fatalf("an invalid request was answered from Redis: %d %v, handler calls %d", resp.StatusCode, resp.Header, len(h.calls))
	}
	if got := metricValue(t, h.reg, "idempotency_total", map[string]string{"outcome": "mismatch"}); got != 0 {
		t.Errorf("mismatch outcomes %v, want 0", got)
	}
}

func TestIdempotencyMiddleware_FallsThroughWhenRedisIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	h := newIdemHarness(t, "redis://"+ln.Addr().String()+"/0", 201)
	for i := range 5 {
		resp, _ := h.post(t, "k", `{"a":1}`, "x")
		if resp.StatusCode != 201 {
			t.Fatalf("request %d with Redis down: %d, want the handler's 201", i, resp.StatusCode)
		}
	}
	if n := len(h.calls); n != 5 {
		t.Errorf("the handler ran %d times, want every request to reach it (its store decides)", n)
	}
	if got := metricValue(t, h.reg, "idempotency_store_errors_total", nil); got == 0 {
		t.Error("no store errors counted")
	}
}
