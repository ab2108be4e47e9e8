package web

import (
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// A request turned away by a rate limit counts under its client's id, or
// under "anonymous" when it failed authentication: never under its
// address, which would make a series per address.
func TestRouter_CountsRateLimitedRequestsByClient(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Two requests at once for each key, and a clock that stands still:
	// no bucket refills during the test.
	limiter := func(name string) RateLimiter {
		l, err := resilience.NewKeyedLimiter(resilience.LimiterSettings{Name: name, PerSecond: 1, Burst: 2, MaxKeys: 1000}, reg)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Unix(1_000_000, 0)
		return l.WithClock(func() time.Time { return start })
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	router := NewRouter(RouterConfig{
		Auth:        NewAuthenticator("test", map[string]string{"client_a": "key-a", "client_b": "key-b"}),
		ClientLimit: limiter("clients"), AnonymousLimit: limiter("anonymous"),
		Ready: func() bool { return true }, Live: ok, ReadyProbe: ok,
		Log: slog.New(slog.DiscardHandler), Metrics: reg, RequestTimeout: time.Second,
	}, func(r chi.Router) { r.Get("/things", ok) })
	send := func(key, remote string) int {
		req := httptest.NewRequest(http.MethodGet, "/v1/things", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		router.ServeHTTP(rec, req)
		return rec.Code
	}

	want := map[[2]string]float64{ // by client, limiter
		{"client_a", "clients"}: 0, {"client_b", "clients"}: 0, {"anonymous", "anonymous"}: 0,
	}
	wantCounts(t, "before any request", reg, want)

	// client_a spends its burst, then is refused twice; client_b, from
	// the same address, is not.
	for i, wantCode := range []int{200, 200, 429, 429} {
		if code := send("key-a", "192.0.2.1:1000"); code != wantCode {
			t.Fatalf("client_a's request %d: %d, want %d", i+1, code, wantCode)
		}
	}
	if code := send("key-b", "192.0.2.1:1000"); code != http.StatusOK {
		t.Fatalf("client_b's request: %d, want 200", code)
	}
	want[[2]string{"client_a", "clients"}] = 2
	wantCounts(t, "after client_a's burst", reg, want)

	// An address failing authentication spends the anonymous burst (401s),
	// then is refused.
	for i, wantCode := range []int{401, 401, 429} {
		if code := send("wrong-key", "198.51.100.7:2000"); code != wantCode {
			t.Fatalf("anonymous request %d: %d, want %d", i+1, code, wantCode)
		}
	}
	want[[2]string{"anonymous", "anonymous"}] = 1
	wantCounts(t, "after the anonymous burst", reg, want)
}

// wantCounts checks that reg's http_ratelimited_total has exactly want's
// series, with want's values.
func wantCounts(t *testing.T, when string, reg *prometheus.Registry, want map[[2]string]float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]string]float64{}
	for _, f := range families {
		if f.GetName() != "http_ratelimited_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			var series [2]string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "client":
					series[0] = l.GetValue()
				case "limiter":
					series[1] = l.GetValue()
				}
			}
			got[series] = m.GetCounter().GetValue()
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s: series %v, want %v", when, got, want)
	}
}
