package idempotency

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// thing is the body of the test route.
type thing struct {
	A       int    `json:"a"`
	B       int    `json:"b"`
	Invalid bool   `json:"invalid"`
	Note    string `json:"note"`
}

var errInvalid = errors.New("invalid thing")

// guardHarness serves one idempotent route whose work the test controls.
type guardHarness struct {
	srv     *httptest.Server
	calls   chan Request // one value per call of Do
	mu      sync.Mutex
	release chan struct{} // Do waits for it
	answer  Response      // what Do answers
	reg     *prometheus.Registry
	metrics *Metrics
}

func newCache(t *testing.T, url string, reg prometheus.Registerer) *Cache {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.MaxRetries = -1
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name: "redis", Window: 10 * time.Second, MinRequests: 3, FailureRatio: 0.5, OpenTimeout: time.Minute, HalfOpenProbes: 1,
	}, RedisOutcome, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return NewCache(rdb, CacheSettings{Prefix: "test", ResponseTTL: time.Hour, Timeout: 200 * time.Millisecond}, breaker)
}

func newGuardHarness(t *testing.T, redisURL string, answer Response) *guardHarness {
	t.Helper()
	h := &guardHarness{calls: make(chan Request, 100), release: make(chan struct{}), answer: answer, reg: prometheus.NewRegistry()}
	close(h.release) // not blocking unless a test replaces it
	var err error
	if h.metrics, err = NewMetrics(h.reg); err != nil {
		t.Fatal(err)
	}
	g := &Guard{Cache: newCache(t, redisURL, h.reg), Metrics: h.metrics, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), LockTTL: time.Minute}
	handler := Handle(g, Route[thing]{
		Pattern: "/things",
		Validate: func(b *thing) error {
			if b.Invalid {
				return errInvalid
			}
			return nil
		},
		Do: func(ctx context.Context, req Request, body *thing) (Response, error) {
			h.calls <- req
			h.mu.Lock()
			release, answer := h.release, h.answer
			h.mu.Unlock()
			<-release
			answer.Body = fmt.Appendf(nil, `{"a":%d,"b":%d,"request":%q}`, body.A, body.B, web.RequestID(ctx))
			return answer, nil
		},
		Fail: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		},
	})
	// The client comes from a header: the platform's router would set it
	// from the API key.
	h.srv = httptest.NewServer(web.NewRouter(web.RouterConfig{
		Auth:           web.NewAuthenticator("test", map[string]string{"client_a": "key_a"}),
		ClientLimit:    unlimited{},
		AnonymousLimit: unlimited{},
		Ready:          func() bool { return true },
		Live:           http.NotFound,
		ReadyProbe:     http.NotFound,
		Log:            slog.New(slog.DiscardHandler),
		Metrics:        prometheus.NewRegistry(),
		RequestTimeout: time.Minute,
		ProblemTypes:   "https://example.test/problems/",
	}, func(r chi.Router) { r.Post("/things", handler) }))
	t.Cleanup(h.srv.Close)
	return h
}

type unlimited struct{}

func (unlimited) Allow(string) resilience.Decision { return resilience.Decision{Allowed: true} }

func final(status int) Response {
	return Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Final: true}
}

func (h *guardHarness) post(t *testing.T, key, body, requestID string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/things", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer key_a")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("X-Request-Id", requestID)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func outcome(t *testing.T, h *guardHarness, o string) float64 {
	t.Helper()
	return testutil.ToFloat64(h.metrics.outcomes.WithLabelValues(o))
}

func TestHandle_ReplaysFinalResponsesByteForByte(t *testing.T) {
	h := newGuardHarness(t, testenv.RedisURL(t), final(201))
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
	if replay.Header.Get("X-Request-Id") != "req-2" {
		t.Errorf("the replay's X-Request-Id %q, want its own exchange's", replay.Header.Get("X-Request-Id"))
	}
	if n := len(h.calls); n != 1 {
		t.Errorf("the work ran %d times, want 1", n)
	}
	if mismatch, _ := h.post(t, "k", `{"a":1,"b":3}`, "req-3"); mismatch.StatusCode != 422 {
		t.Errorf("the key with another body: %d, want 422", mismatch.StatusCode)
	}
	if got := outcome(t, h, OutcomeReplay); got != 1 {
		t.Errorf("replay outcomes %v, want 1", got)
	}
}

func TestHandle_RefusesDuplicatesInFlight(t *testing.T) {
	h := newGuardHarness(t, testenv.RedisURL(t), final(201))
	h.mu.Lock()
	h.release = make(chan struct{})
	release := h.release
	h.mu.Unlock()

	done := make(chan int)
	go func() {
		resp, _ := h.post(t, "k", `{"a":1}`, "first")
		done <- resp.StatusCode
	}()
	<-h.calls // the first is doing its work
	if resp, _ := h.post(t, "k", `{"a":1}`, "dup"); resp.StatusCode != 409 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("duplicate in flight: %d (Retry-After %q), want 409 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
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

func TestHandle_DoesNotStoreAnswersThatAreNotFinal(t *testing.T) {
	h := newGuardHarness(t, testenv.RedisURL(t), Response{Status: 202})
	if resp, _ := h.post(t, "k", `{"a":1}`, "1"); resp.StatusCode != 202 {
		t.Fatal(resp.StatusCode)
	}
	h.mu.Lock()
	h.answer = final(201)
	h.mu.Unlock()
	if resp, _ := h.post(t, "k", `{"a":1}`, "2"); resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("after a 202 the key must reach the work again: %d %v", resp.StatusCode, resp.Header)
	}
	if n := len(h.calls); n != 2 {
		t.Errorf("the work ran %d times, want 2", n)
	}
}

func TestHandle_RefusesBadRequestsAsBadWhateverTheKeyHolds(t *testing.T) {
	h := newGuardHarness(t, testenv.RedisURL(t), final(201))
	if resp, _ := h.post(t, "k", `{"a":1}`, "1"); resp.StatusCode != 201 {
		t.Fatal(resp.StatusCode)
	}
	for _, tt := range []struct {
		name, body string
		want       int
	}{
		{"invalid", `{"invalid":true}`, 422},       // Fail's answer, not a replay nor a mismatch
		{"malformed", `{"a":`, 400},                // the decoder's
		{"unknown field", `{"c":1}`, 400},          // the decoder's
		{"duplicate member", `{"a":1,"a":2}`, 400}, // the decoder's: it would share a fingerprint
	} {
		resp, _ := h.post(t, "k", tt.body, tt.name)
		if resp.StatusCode != tt.want || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("%s with a completed key: %d %v, want %d", tt.name, resp.StatusCode, resp.Header, tt.want)
		}
	}
	if n := len(h.calls); n != 1 {
		t.Errorf("the work ran %d times, want once: bad requests never reach it", n)
	}
	if got := outcome(t, h, OutcomeMismatch); got != 0 {
		t.Errorf("mismatch outcomes %v, want 0", got)
	}
}

func TestHandle_RefusesMissingAndMalformedKeys(t *testing.T) {
	h := newGuardHarness(t, testenv.RedisURL(t), final(201))
	for _, key := range []string{"", "a b", strings.Repeat("k", 256), "clé"} {
		if resp, body := h.post(t, key, `{"a":1}`, "x"); resp.StatusCode != 400 || !strings.Contains(body, "invalid-idempotency-key") {
			t.Errorf("key %q: %d %s, want 400 invalid-idempotency-key", key, resp.StatusCode, body)
		}
	}
	if n := len(h.calls); n != 0 {
		t.Errorf("the work ran %d times", n)
	}
}

func TestHandle_GoesOnWithoutRedisWhenItIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	h := newGuardHarness(t, "redis://"+ln.Addr().String()+"/0", final(201))
	for i := range 5 {
		if resp, _ := h.post(t, "k", `{"a":1}`, "x"); resp.StatusCode != 201 {
			t.Fatalf("request %d with Redis down: %d, want the work's 201", i, resp.StatusCode)
		}
	}
	if n := len(h.calls); n != 5 {
		t.Errorf("the work ran %d times, want every request to reach it (Postgres decides)", n)
	}
	if got := testutil.ToFloat64(h.metrics.cacheErrors); got == 0 {
		t.Error("no fast path errors counted")
	}
}

// The same key and body for two resources (the returns of two orders) are
// two requests: the path's parameters are part of the fingerprint.
func TestHandle_PathParametersArePartOfTheFingerprint(t *testing.T) {
	var fingerprints []string
	var mu sync.Mutex
	handler := Handle(&Guard{Metrics: mustMetrics(t), Log: slog.New(slog.DiscardHandler)}, Route[thing]{
		Pattern:  "/things/{id}/parts",
		Validate: func(*thing) error { return nil },
		Do: func(_ context.Context, req Request, _ *thing) (Response, error) {
			mu.Lock()
			fingerprints = append(fingerprints, req.Fingerprint)
			mu.Unlock()
			return final(201), nil
		},
		Fail: func(w http.ResponseWriter, r *http.Request, err error) { w.WriteHeader(500) },
	})
	r := chi.NewRouter()
	r.Post("/things/{id}/parts", handler)
	for _, id := range []string{"one", "two", "one"} {
		req := httptest.NewRequest(http.MethodPost, "/things/"+id+"/parts", strings.NewReader(`{"a":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "k")
		r.ServeHTTP(httptest.NewRecorder(), req)
	}
	if len(fingerprints) != 3 || fingerprints[0] == fingerprints[1] || fingerprints[0] != fingerprints[2] {
		t.Errorf("fingerprints %q: want the two ids to differ and the same id to agree", fingerprints)
	}
}

func mustMetrics(t *testing.T) *Metrics {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFingerprint_DiffersByEachPart(t *testing.T) {
	base := Fingerprint("POST", "/v1/orders", "client_a", []byte(`{"a":1}`))
	for _, tt := range []struct{ name, method, route, scope, body string }{
		{"other method", "PUT", "/v1/orders", "client_a", `{"a":1}`},
		{"other route", "POST", "/v1/returns", "client_a", `{"a":1}`},
		{"other scope", "POST", "/v1/orders", "client_b", `{"a":1}`},
		{"other body", "POST", "/v1/orders", "client_a", `{"a":2}`},
		{"parts shifted", "POST", "/v1/order", "sclient_a", `{"a":1}`},
	} {
		if Fingerprint(tt.method, tt.route, tt.scope, []byte(tt.body)) == base {
			t.Errorf("%s: same fingerprint", tt.name)
		}
	}
	if Fingerprint("POST", "/v1/orders", "client_a", []byte(`{"a":1}`)) != base {
		t.Error("the same request gave another fingerprint")
	}
}
