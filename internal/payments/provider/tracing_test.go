package provider_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// tracedProvider is the provider at url as the service wires it (New),
// traced into a span recorder.
func tracedProvider(t *testing.T, url string, tune func(*resilience.ProtectionSettings)) (*provider.Resilient, resilience.Protections, *tracetest.SpanRecorder, trace.Tracer) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	s := provider.DefaultSettings()
	s.URL, s.Timeout = url, time.Second
	s.Protections.Retry.BaseDelay, s.Protections.Retry.MaxDelay = time.Millisecond, time.Millisecond
	tune(&s.Protections)
	r, p, err := provider.New(s, tp, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Bulkhead.Close(context.Background()) })
	return r, p, rec, tp.Tracer("test")
}

// traceparents is a provider in front of which the traceparent of every
// request is kept, in order.
type traceparents struct {
	mu   sync.Mutex
	seen []string
	next http.Handler
}

func (p *traceparents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.seen = append(p.seen, r.Header.Get("Traceparent"))
	p.mu.Unlock()
	p.next.ServeHTTP(w, r)
}

func (p *traceparents) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

func attrs(s sdktrace.ReadOnlySpan) *attribute.Set {
	set := attribute.NewSet(s.Attributes()...)
	return &set
}

// TestResilient_EachAttemptIsAClientSpanTheProviderSees: a charge retried
// once is two spans under the caller's, numbered, with the breaker's state
// and the bulkhead's wait, and each HTTP request carries its own attempt's
// span as the parent in its traceparent.
func TestResilient_EachAttemptIsAClientSpanTheProviderSees(t *testing.T) {
	fake := fakeprovider.New()
	var calls atomic.Int64
	spy := &traceparents{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fake.ServeHTTP(w, r)
	})}
	srv := httptest.NewServer(spy)
	defer srv.Close()
	r, _, rec, tracer := tracedProvider(t, srv.URL, func(*resilience.ProtectionSettings) {})

	ctx, parent := tracer.Start(t.Context(), "request")
	if _, err := r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: "k1", Amount: 1000, Currency: "usd", Reference: "r1"}); err != nil {
		t.Fatal(err)
	}
	parent.End()

	var attempts []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "provider charge" {
			attempts = append(attempts, s)
		}
	}
	seen := spy.all()
	if len(attempts) != 2 || len(seen) != 2 {
		t.Fatalf("%d attempt spans and %d requests, want 2 of each", len(attempts), len(seen))
	}
	for i, s := range attempts {
		a := attrs(s)
		if s.SpanKind() != trace.SpanKindClient || s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("attempt %d: kind %v, parent %v; want a client span under the caller's", i+1, s.SpanKind(), s.Parent().SpanID())
		}
		if n, _ := a.Value("resilience.attempt"); n.AsInt64() != int64(i+1) {
			t.Errorf("attempt %d: resilience.attempt = %v", i+1, n)
		}
		if st, _ := a.Value("resilience.breaker.state"); st.AsString() != "closed" {
			t.Errorf("attempt %d: resilience.breaker.state = %q, want closed", i+1, st.AsString())
		}
		if _, ok := a.Value("resilience.bulkhead.wait_seconds"); !ok {
			t.Errorf("attempt %d: no resilience.bulkhead.wait_seconds", i+1)
		}
		want := "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
		if seen[i] != want {
			t.Errorf("request %d: traceparent %q, want %q (its attempt's span)", i+1, seen[i], want)
		}
	}
	first, second := attrs(attempts[0]), attrs(attempts[1])
	if code, _ := first.Value("http.response.status_code"); code.AsInt64() != 503 || attempts[0].Status().Code != codes.Error {
		t.Errorf("first attempt: status code %v, span status %v; want 503 and an error", code, attempts[0].Status())
	}
	if sent, _ := first.Value("provider.sent"); !sent.AsBool() {
		t.Error("first attempt: provider.sent is not true, though the request reached the provider")
	}
	if code, _ := second.Value("http.response.status_code"); code.AsInt64() != 201 || attempts[1].Status().Code == codes.Error {
		t.Errorf("second attempt: status code %v, span status %v; want 201 and no error", code, attempts[1].Status())
	}
	if n, _ := second.Value("http.request.resend_count"); n.AsInt64() != 1 {
		t.Errorf("second attempt: http.request.resend_count = %v, want 1", n)
	}
}

// TestResilient_AnAttemptTheBreakerRefusesIsTraced: its span says the
// breaker was open and that nothing was sent; the provider saw nothing.
func TestResilient_AnAttemptTheBreakerRefusesIsTraced(t *testing.T) {
	spy := &traceparents{next: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })}
	srv := httptest.NewServer(spy)
	defer srv.Close()
	r, _, rec, tracer := tracedProvider(t, srv.URL, func(p *resilience.ProtectionSettings) {
		p.Retry.MaxAttempts = 1
		p.Breaker.MinRequests, p.Breaker.FailureRatio = 1, 1
	})
	ctx, parent := tracer.Start(t.Context(), "request")
	defer parent.End()
	req := provider.ChargeRequest{IdempotencyKey: "k1", Amount: 1000, Currency: "usd", Reference: "r1"}
	if _, err := r.Charge(ctx, req); err == nil {
		t.Fatal("a charge the provider answered 500 succeeded")
	}
	if _, err := r.Charge(ctx, req); err == nil {
		t.Fatal("a charge behind an open breaker succeeded")
	}
	spans := rec.Ended()
	if len(spans) != 2 || len(spy.all()) != 1 {
		t.Fatalf("%d spans, %d requests; want 2 spans, 1 request", len(spans), len(spy.all()))
	}
	refused := attrs(spans[1])
	state, _ := refused.Value("resilience.breaker.state")
	sent, _ := refused.Value("provider.sent")
	if state.AsString() != "open" || sent.AsBool() || spans[1].Status().Code != codes.Error {
		t.Errorf("refused attempt: breaker %q, provider.sent %v, status %v; want open, false, error", state.AsString(), sent.AsBool(), spans[1].Status())
	}
}

// TestResilient_AnAttemptsSpanSaysHowLongItsCallWaitedInTheBulkhead: with
// the one slot taken, the next call waits for it, and its span shows at
// least the time the slot stayed taken after the call joined the line.
func TestResilient_AnAttemptsSpanSaysHowLongItsCallWaitedInTheBulkhead(t *testing.T) {
	fake := fakeprovider.New()
	entered, release := make(chan struct{}, 2), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		fake.ServeHTTP(w, r)
	}))
	defer srv.Close()
	r, p, rec, tracer := tracedProvider(t, srv.URL, func(p *resilience.ProtectionSettings) {
		p.Bulkhead.Concurrency, p.Bulkhead.Queue = 1, 1
	})
	ctx, parent := tracer.Start(t.Context(), "request")
	defer parent.End()

	var wg sync.WaitGroup
	charge := func(key string) {
		wg.Go(func() {
			if _, err := r.Charge(ctx, provider.ChargeRequest{IdempotencyKey: key, Amount: 1000, Currency: "usd", Reference: key}); err != nil {
				t.Errorf("charge %s: %v", key, err)
			}
		})
	}
	charge("first")
	<-entered // the first holds the slot
	charge("second")
	for {
		if _, queued := p.Bulkhead.Stats(); queued == 1 {
			break
		}
		runtime.Gosched()
	}
	queued := time.Now() // the second has joined the line by now...
	close(release)
	held := time.Since(queued) // ...and gets the slot after now
	wg.Wait()

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	w, _ := attrs(spans[1]).Value("resilience.bulkhead.wait_seconds")
	if w.AsFloat64() < held.Seconds() {
		t.Errorf("the second call's bulkhead wait %gs, want at least %gs", w.AsFloat64(), held.Seconds())
	}
}
