// Package servetest holds the tests that run app.Serve against real
// Postgres and Redis. They live apart from package app so that its own
// tests need no Docker (a renamed copy of the template runs those).
package servetest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/app"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestServe_OnePaymentIsOneTrace: traced, one payment, through the real
// wiring, Postgres, Redis and a fake provider, is one trace: the server
// span named by its route, under it the statements, the Redis commands and
// the provider attempt, whose traceparent the provider received; its log
// lines name it, and the latency histogram keeps it as an exemplar. Spans
// still batched at the signal are exported by the shutdown.
func TestServe_OnePaymentIsOneTrace(t *testing.T) {
	s := startServe(t, map[string]string{"OTEL_TRACES_EXPORTER": "otlp"})
	requestID := s.pay(t)
	exemplar := s.latencyExemplar(t)
	spans := s.stop(t)

	var server sdktrace.ReadOnlySpan
	for _, sp := range spans {
		if sp.SpanKind() == trace.SpanKindServer {
			if server != nil {
				t.Fatalf("two server spans:\n%s", tree(spans))
			}
			server = sp
		}
	}
	if server == nil || server.Name() != "POST /v1/payments" || server.Parent().IsValid() {
		t.Fatalf("want one root server span POST /v1/payments, got:\n%s", tree(spans))
	}
	traceID := server.SpanContext().TraceID()
	if code, _ := attrs(server).Value("http.response.status_code"); code.AsInt64() != http.StatusCreated {
		t.Errorf("server span's status code %v, want 201", code)
	}

	// Everything else is the request's: no probe, no background work. A
	// Redis command that opens a connection has the handshake's commands
	// under it.
	parents := map[trace.SpanID]trace.SpanID{}
	for _, sp := range spans {
		parents[sp.SpanContext().SpanID()] = sp.Parent().SpanID()
	}
	kinds := map[string]int{}
	var attempt sdktrace.ReadOnlySpan
	for _, sp := range spans {
		if sp.SpanContext().SpanID() == server.SpanContext().SpanID() {
			continue
		}
		up := sp.Parent().SpanID()
		for up.IsValid() && up != server.SpanContext().SpanID() {
			up = parents[up]
		}
		if sp.SpanContext().TraceID() != traceID || !up.IsValid() {
			t.Errorf("span %q is not under the request's server span:\n%s", sp.Name(), tree(spans))
		}
		if sp.Parent().SpanID() != server.SpanContext().SpanID() {
			continue
		}
		a := attrs(sp)
		if system, ok := a.Value("db.system.name"); ok {
			kinds[system.AsString()]++
			continue
		}
		if sp.Name() != "provider charge" || attempt != nil {
			t.Errorf("unexpected span %q:\n%s", sp.Name(), tree(spans))
			continue
		}
		attempt = sp
		kinds["provider"]++
		for key, want := range map[attribute.Key]string{"resilience.attempt": "1", "resilience.breaker.state": "closed", "http.response.status_code": "201"} {
			if v, _ := a.Value(key); v.String() != want {
				t.Errorf("provider attempt's %s = %q, want %q", key, v.String(), want)
			}
		}
		if _, ok := a.Value("resilience.bulkhead.wait_seconds"); !ok || sp.SpanKind() != trace.SpanKindClient {
			t.Errorf("provider attempt: kind %v, attributes %v; want a client span with its bulkhead wait", sp.SpanKind(), sp.Attributes())
		}
	}
	if kinds["postgresql"] == 0 || kinds["redis"] == 0 || kinds["provider"] != 1 {
		t.Errorf("spans of the request: %v; want statements, Redis commands and one provider attempt:\n%s", kinds, tree(spans))
	}
	if attempt != nil {
		want := fmt.Sprintf("00-%s-%s-01", traceID, attempt.SpanContext().SpanID())
		if got := s.provider.traceparents(); len(got) != 1 || got[0] != want {
			t.Errorf("the provider received traceparents %q, want [%s]: the attempt's span", got, want)
		}
	}

	lines := s.logs.Lines(func(l map[string]any) bool { return l["request_id"] == requestID })
	if len(lines) == 0 {
		t.Fatal("no log line of the request")
	}
	for _, l := range lines {
		if l["trace_id"] != traceID.String() {
			t.Errorf("log line of the request without its trace_id %s: %v", traceID, l)
		}
		if l["msg"] == "http request" && l["span_id"] != server.SpanContext().SpanID().String() {
			t.Errorf("access log line's span_id %v, want the server span's %s", l["span_id"], server.SpanContext().SpanID())
		}
	}
	if exemplar != traceID.String() {
		t.Errorf("latency exemplar of POST /v1/payments %q, want the trace id %s", exemplar, traceID)
	}
}

// TestServe_UntracedUnlessConfigured: with no OTEL_* variable, nothing is
// recorded or sent: no span reaches the exporter, no traceparent the
// provider, no trace id the logs or the metrics; OpenTelemetry's global
// provider is left as it was.
func TestServe_UntracedUnlessConfigured(t *testing.T) {
	global := otel.GetTracerProvider()
	s := startServe(t, nil)
	requestID := s.pay(t)
	exemplar := s.latencyExemplar(t)
	spans := s.stop(t)

	if len(spans) != 0 {
		t.Errorf("%d spans exported, want none:\n%s", len(spans), tree(spans))
	}
	if got := s.provider.traceparents(); len(got) != 1 || got[0] != "" {
		t.Errorf("the provider received traceparents %q, want one request without", got)
	}
	for _, l := range s.logs.Lines(func(l map[string]any) bool { return l["request_id"] == requestID }) {
		if _, ok := l["trace_id"]; ok {
			t.Errorf("log line names a trace: %v", l)
		}
	}
	if exemplar != "" {
		t.Errorf("latency exemplar %q, want none", exemplar)
	}
	if otel.GetTracerProvider() != global {
		t.Error("the global tracer provider was replaced")
	}
}

// TestServe_AHangingCollectorCannotHoldTheShutdown: the spans left at the
// signal are exported within SHUTDOWN_TIMEOUT, or given up then.
func TestServe_AHangingCollectorCannotHoldTheShutdown(t *testing.T) {
	hang := hangingExporter{release: make(chan struct{})}
	defer close(hang.release)
	s := startServeExporting(t, map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "SHUTDOWN_TIMEOUT": "1s"}, hang)
	s.pay(t)
	stopped := time.Now()
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	// The timeout, and the second of grace server.Run gives its tasks.
	if took := time.Since(stopped); took > 5*time.Second {
		t.Errorf("serve returned %v after the signal, want about SHUTDOWN_TIMEOUT=1s", took)
	}
	s.logs.WaitFor(t, "spans not exported", func(l map[string]any) bool {
		return l["msg"] == "work abandoned at SHUTDOWN_TIMEOUT" && strings.Contains(fmt.Sprint(l["err"]), "tracing")
	})
}

// hangingExporter is a collector that does not answer.
type hangingExporter struct{ release chan struct{} }

func (e hangingExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-e.release:
		return nil
	}
}

func (hangingExporter) Shutdown(context.Context) error { return nil }

// served is serve running in the background against a fresh database, a
// Redis and a fake provider.
type served struct {
	api, admin string
	logs       *testenv.Logs
	provider   *providerSpy
	spans      *keptSpans // what startServe's exporter kept
	cancel     context.CancelFunc
	done       chan error // serve's error, once it returns
	stopOnce   sync.Once
	err        error // serve's error, once stopped
}

func startServe(t *testing.T, env map[string]string) *served {
	t.Helper()
	spans := &keptSpans{tracetest.NewInMemoryExporter()}
	s := startServeExporting(t, env, spans)
	s.spans = spans
	return s
}

// startServeExporting starts serve, its spans exported to export.
func startServeExporting(t *testing.T, env map[string]string, export sdktrace.SpanExporter) *served {
	t.Helper()
	spy := &providerSpy{fake: fakeprovider.New()}
	provider := httptest.NewServer(spy)
	t.Cleanup(provider.Close)
	full := map[string]string{
		"DATABASE_URL":         testenv.NewDatabase(t),
		"REDIS_URL":            testenv.RedisURL(t),
		"PROVIDER_URL":         provider.URL,
		"API_KEYS":             "client_a:key_a",
		"HTTP_ADDR":            "127.0.0.1:0",
		"ADMIN_ADDR":           "127.0.0.1:0",
		"SHUTDOWN_DRAIN_DELAY": "0s",
	}
	for k, v := range env {
		full[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{logs: &testenv.Logs{}, provider: spy, cancel: cancel, done: make(chan error, 1)}
	go func() {
		s.done <- app.ServeExporting(ctx, func(k string) string { return full[k] }, s.logs, "test", export)
	}()
	t.Cleanup(func() { _ = s.wait() })
	listening := func(name string) string {
		l := s.logs.WaitFor(t, "listening "+name, func(l map[string]any) bool { return l["msg"] == "listening" && l["server"] == name })
		return "http://" + l["addr"].(string)
	}
	s.api, s.admin = listening("api"), listening("admin")
	s.logs.WaitFor(t, "ready", func(l map[string]any) bool { return l["msg"] == "ready: schema is current" })
	return s
}

// pay makes one payment, and returns its request id.
func (s *served) pay(t *testing.T) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.api+"/v1/payments", strings.NewReader(`{"amount": 1000, "currency": "usd", "description": "tea"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer key_a")
	req.Header.Set("Idempotency-Key", "order-1")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/payments: %d %s, want 201", resp.StatusCode, body)
	}
	return resp.Header.Get("X-Request-Id")
}

// latencyExemplar scrapes the admin port as Prometheus does, in
// OpenMetrics, and returns the trace id of the exemplar of POST
// /v1/payments's latency, or "".
func (s *served) latencyExemplar(t *testing.T) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.admin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		line := sc.Text()
		if !strings.HasPrefix(line, "payservice_http_request_duration_seconds_bucket{") || !strings.Contains(line, `route="/v1/payments"`) {
			continue
		}
		if _, ex, ok := strings.Cut(line, ` # {trace_id="`); ok {
			id, _, _ := strings.Cut(ex, `"`)
			return id
		}
	}
	return ""
}

// stop stops serve, and returns the spans exported by then.
func (s *served) stop(t *testing.T) []sdktrace.ReadOnlySpan {
	t.Helper()
	if err := s.wait(); err != nil {
		t.Fatalf("serve after cancellation: %v, want nil", err)
	}
	return s.spans.GetSpans().Snapshots()
}

// wait cancels serve's context and waits for it to return, once.
func (s *served) wait() error {
	s.stopOnce.Do(func() {
		s.cancel()
		select {
		case s.err = <-s.done:
		case <-time.After(30 * time.Second):
			s.err = errors.New("serve did not return within 30s of cancellation")
		}
	})
	return s.err
}

// keptSpans is the in-memory exporter, but its spans outlive the
// provider's shutdown, which would clear them.
type keptSpans struct{ *tracetest.InMemoryExporter }

func (keptSpans) Shutdown(context.Context) error { return nil }

// providerSpy is the fake provider, keeping the traceparent header of each
// charge.
type providerSpy struct {
	fake    *fakeprovider.Provider
	mu      sync.Mutex
	headers []string
}

func (p *providerSpy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/charges" {
		p.mu.Lock()
		p.headers = append(p.headers, r.Header.Get("Traceparent"))
		p.mu.Unlock()
	}
	p.fake.ServeHTTP(w, r)
}

func (p *providerSpy) traceparents() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.headers...)
}

func attrs(s sdktrace.ReadOnlySpan) *attribute.Set {
	set := attribute.NewSet(s.Attributes()...)
	return &set
}

// tree lists spans as a failing test shows them: name, id, parent.
func tree(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s %s (%v) ← %s\n", s.SpanContext().SpanID(), s.Name(), s.SpanKind(), s.Parent().SpanID())
	}
	return b.String()
}
