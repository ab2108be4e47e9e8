package web

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/platform/tracing"
)

// tracedRouter is a router with one route, /v1/things/{id}, its spans
// recorded in rec and its access log written to logs (trace ids
// included, as the service's logger has them when traced).
func tracedRouter(t *testing.T, tp trace.TracerProvider, logs *bytes.Buffer) (http.Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	return NewRouter(RouterConfig{
		Auth:        NewAuthenticator("test", map[string]string{"client": "key"}),
		ClientLimit: allowAll{}, AnonymousLimit: allowAll{},
		Ready: func() bool { return true }, Live: ok, ReadyProbe: ok,
		Log:     slog.New(tracing.LogHandler(slog.NewJSONHandler(logs, nil))),
		Metrics: reg, RequestTimeout: time.Second,
		Tracer: tp,
	}, func(r chi.Router) {
		r.Post("/things/{id}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) })
	}), reg
}

func tracedServe(h http.Handler, method, path string) {
	req := httptest.NewRequest(method, path, nil)
	req.Header.Set("Authorization", "Bearer key")
	h.ServeHTTP(httptest.NewRecorder(), req)
}

// TestRouter_TracedRequestsAreNamedByRouteAndLinkLogsAndMetrics: a
// request's server span is named after its route pattern, the access log
// line names its trace, and the latency histogram keeps its trace id as an
// exemplar; the health probes have no span.
func TestRouter_TracedRequestsAreNamedByRouteAndLinkLogsAndMetrics(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var logs bytes.Buffer
	h, reg := tracedRouter(t, tp, &logs)

	tracedServe(h, http.MethodPost, "/v1/things/42")
	tracedServe(h, http.MethodGet, "/health/live")
	tracedServe(h, http.MethodGet, "/health/ready")
	tracedServe(h, http.MethodGet, "/nowhere")

	spans := rec.Ended()
	var names []string
	for _, s := range spans {
		names = append(names, s.Name())
	}
	if strings.Join(names, ",") != "POST /v1/things/{id},GET" {
		t.Fatalf("spans %q, want POST /v1/things/{id} and GET (the 404 has no route), and none for the probes", names)
	}
	traceID := spans[0].SpanContext().TraceID().String()

	var line map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(logs.String(), "\n", 2)[0]), &line); err != nil {
		t.Fatal(err)
	}
	if line["msg"] != "http request" || line["trace_id"] != traceID || line["span_id"] != spans[0].SpanContext().SpanID().String() {
		t.Errorf("access log line %v, want the trace and span of the request (%s)", line, traceID)
	}

	if got := latencyExemplars(t, reg, "/v1/things/{id}"); len(got) != 1 || got[0] != traceID {
		t.Errorf("exemplars of /v1/things/{id} %v, want the request's trace id %s", got, traceID)
	}
}

// TestRouter_UntracedHasNoSpanNoTraceIDNoExemplar is the path taken
// while tracing is off: nothing of it shows.
func TestRouter_UntracedHasNoSpanNoTraceIDNoExemplar(t *testing.T) {
	var logs bytes.Buffer
	h, reg := tracedRouter(t, nil, &logs)
	tracedServe(h, http.MethodPost, "/v1/things/42")
	if strings.Contains(logs.String(), "trace_id") {
		t.Errorf("access log %s names a trace", logs.String())
	}
	if got := latencyExemplars(t, reg, "/v1/things/{id}"); len(got) != 0 {
		t.Errorf("exemplars %v, want none", got)
	}
}

// latencyExemplars returns the trace ids of the exemplars of the latency
// histogram of route.
func latencyExemplars(t *testing.T, reg *prometheus.Registry, route string) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range families {
		if f.GetName() != "http_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "route" || l.GetValue() != route {
					continue
				}
				for _, b := range m.GetHistogram().GetBucket() {
					for _, el := range b.GetExemplar().GetLabel() {
						if el.GetName() == "trace_id" {
							ids = append(ids, el.GetValue())
						}
					}
				}
			}
		}
	}
	return ids
}
