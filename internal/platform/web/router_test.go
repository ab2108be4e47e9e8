package web

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

type allowAll struct{}

func (allowAll) Allow(string) resilience.Decision {
	return resilience.Decision{Allowed: true, Limit: 10, Remaining: 9}
}

func newTestRouter(openAPI []byte) http.Handler {
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	return NewRouter(RouterConfig{
		Auth:        NewAuthenticator("test", map[string]string{"client": "key"}),
		ClientLimit: allowAll{}, AnonymousLimit: allowAll{},
		Ready: func() bool { return true }, Live: ok, ReadyProbe: ok,
		Log: slog.New(slog.DiscardHandler), Metrics: prometheus.NewRegistry(), RequestTimeout: time.Second,
		OpenAPI: openAPI,
	}, func(chi.Router) {})
}

func TestRouter_ServesTheOpenAPIDescriptionAsGivenWithoutAuthentication(t *testing.T) {
	spec := []byte("openapi: 3.1.0\ninfo: {title: t, version: \"1\"}\n")
	rec := httptest.NewRecorder()
	newTestRouter(spec).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != string(spec) {
		t.Fatalf("GET /openapi.yaml: %d %q, want 200 with the description as given", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/yaml" {
		t.Errorf("Content-Type %q, want application/yaml", ct)
	}
	if rec.Header().Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}

	rec = httptest.NewRecorder()
	newTestRouter(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET /openapi.yaml without a description: %d %s, want 404", rec.Code, body)
	}
}
