package tracing_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/tracing"
)

// load reads a tracing configuration from env.
func load(env map[string]string) (tracing.Config, error) {
	c := tracing.DefaultConfig("svc")
	_, err := config.Load(func(k string) string { return env[k] }, c.Bind)
	return c, err
}

func TestConfig_OffUnlessAnExporterOrAnEndpointIsSet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantURL string // "" for off
	}{
		{"nothing set", nil, ""},
		{"a sampler alone", map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}, ""},
		{"the exporter alone: the specification's default endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces"},
		{"a base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"},
		{"a base endpoint with a path and a slash", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector/otlp/"}, "https://collector/otlp/v1/traces"},
		{"a traces endpoint, used as it is", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/in",
		}, "http://traces:9999/in"},
		{"none wins over an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Enabled(); got != (tc.wantURL != "") {
				t.Fatalf("Enabled() = %v, want %v", got, tc.wantURL != "")
			}
			if tc.wantURL == "" {
				if d := c.Describe(); d != "off" {
					t.Errorf("Describe() = %q, want off", d)
				}
				if tr := tracing.New(c, "v1", nil, slog.New(slog.DiscardHandler)); tr != nil || tr.Provider() != nil || tr.Shutdown(t.Context()) != nil {
					t.Errorf("New of a configuration that is off = %v, want nil (whose Provider is nil)", tr)
				}
				return
			}
			if c.URL() != tc.wantURL {
				t.Errorf("URL() = %q, want %q", c.URL(), tc.wantURL)
			}
			if d := c.Describe(); !strings.Contains(d, tc.wantURL) {
				t.Errorf("Describe() = %q, want it to say where spans go (%s)", d, tc.wantURL)
			}
		})
	}
}

// TestConfig_ABadValueIsAStartUpErrorNamingTheVariable: the SDK's own
// parsing ignores what it cannot read; here it stops the start.
func TestConfig_ABadValueIsAStartUpErrorNamingTheVariable(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"OTEL_TRACES_EXPORTER", "zipkin"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://collector:4317"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"},
		{"OTEL_EXPORTER_OTLP_HEADERS", "authorization"},
		{"OTEL_EXPORTER_OTLP_HEADERS", "bad name=x"},
		{"OTEL_EXPORTER_OTLP_TIMEOUT", "10s"},
		{"OTEL_RESOURCE_ATTRIBUTES", "region=%zz"},
		{"OTEL_TRACES_SAMPLER", "jaeger_remote"},
		{"OTEL_TRACES_SAMPLER_ARG", "1.5"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			_, err := load(map[string]string{tc.name: tc.value})
			if err == nil || !strings.HasPrefix(err.Error(), tc.name+"=") {
				t.Fatalf("error %v, want one naming %s", err, tc.name)
			}
		})
	}
}

func TestConfig_HeadersAreMaskedInTheStartUpLog(t *testing.T) {
	c := tracing.DefaultConfig("svc")
	env := map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret,x-team=pay"}
	if _, err := config.Load(func(k string) string { return env[k] }, c.Bind); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	slog.New(slog.NewJSONHandler(&out, nil)).Info("starting", "config", config.Values(c.Bind))
	if strings.Contains(out.String(), "s3cret") || !strings.Contains(out.String(), `"OTEL_EXPORTER_OTLP_HEADERS":"authorization=xxxxx,x-team=xxxxx"`) {
		t.Errorf("start-up log %s: want the headers' names and no value", out.String())
	}
}

// asExportRequest reads body as a collector does, as the OTLP service's
// ExportTraceServiceRequest, which the protocol defines as
// `repeated ResourceSpans resource_spans = 1`: nothing but field 1, each
// occurrence a whole ResourceSpans. The exporter sends a TracesData,
// whose one field is the same; this holds it to the request's definition
// without linking the collector package (and with it gRPC).
func asExportRequest(body []byte) error {
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if num != 1 || typ != protowire.BytesType {
			return fmt.Errorf("field %d (wire type %d): an ExportTraceServiceRequest has only resource_spans (1, bytes)", num, typ)
		}
		body = body[n:]
		v, n := protowire.ConsumeBytes(body)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := proto.Unmarshal(v, &tracepb.ResourceSpans{}); err != nil {
			return fmt.Errorf("resource_spans: %w", err)
		}
		body = body[n:]
	}
	return nil
}

// collector is an OTLP/HTTP endpoint keeping what it receives.
type collector struct {
	mu       sync.Mutex
	requests []*http.Request
	data     []*tracepb.TracesData
	status   int // answered; 0 for 200
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var data tracepb.TracesData
	if err == nil {
		err = asExportRequest(body)
	}
	if err == nil {
		err = proto.Unmarshal(body, &data)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = append(c.requests, r)
	c.data = append(c.data, &data)
	if c.status != 0 {
		w.WriteHeader(c.status)
	}
}

func (c *collector) spans() map[string]*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	spans := map[string]*tracepb.Span{}
	for _, d := range c.data {
		for _, rs := range d.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					spans[s.Name] = s
				}
			}
		}
	}
	return spans
}

// TestNew_ExportsOverOTLPHTTPAndFlushesAtShutdown: spans reach an OTLP
// endpoint as protobuf at /v1/traces, with the configured headers and
// resource, their tree and their attributes intact; those still batched
// go out at Shutdown.
func TestNew_ExportsOverOTLPHTTPAndFlushesAtShutdown(t *testing.T) {
	col := &collector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	c, err := load(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL,
		"OTEL_EXPORTER_OTLP_HEADERS":  "authorization=Bearer%20t0ken",
		"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=test,service.name=overridden",
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := tracing.New(c, "v1.2.3", nil, slog.New(slog.DiscardHandler))
	tracer := tr.Provider().Tracer("test")
	ctx, parent := tracer.Start(t.Context(), "parent", trace.WithSpanKind(trace.SpanKindServer))
	_, child := tracer.Start(ctx, "child", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.Int("n", 7), attribute.Bool("b", true), attribute.Float64("f", 0.5),
		attribute.String("s", "x"), attribute.StringSlice("ss", []string{"a", "b"})))
	child.AddEvent("retrying")
	child.SetStatus(codes.Error, "boom")
	child.End()
	parent.End()
	// The batch waits seconds to fill: only Shutdown sends it now.
	if err := tr.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}

	if len(col.requests) != 1 {
		t.Fatalf("collector received %d requests, want 1", len(col.requests))
	}
	req := col.requests[0]
	if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || req.Header.Get("Authorization") != "Bearer t0ken" {
		t.Errorf("request %s %s, Content-Type %q, Authorization %q", req.Method, req.URL.Path, req.Header.Get("Content-Type"), req.Header.Get("Authorization"))
	}
	res := map[string]string{}
	for _, kv := range col.data[0].ResourceSpans[0].Resource.Attributes {
		res[kv.Key] = kv.Value.GetStringValue()
	}
	if res["service.name"] != "svc" || res["service.version"] != "v1.2.3" || res["deployment.environment.name"] != "test" {
		t.Errorf("resource %v: want service.name svc (OTEL_SERVICE_NAME wins), its version and the configured attributes", res)
	}
	spans := col.spans()
	p, ch := spans["parent"], spans["child"]
	if p == nil || ch == nil {
		t.Fatalf("spans %v, want parent and child", spans)
	}
	if !bytes.Equal(ch.ParentSpanId, p.SpanId) || !bytes.Equal(ch.TraceId, p.TraceId) || len(p.ParentSpanId) != 0 {
		t.Errorf("child's parent %x, trace %x; parent's id %x, trace %x: want child under parent", ch.ParentSpanId, ch.TraceId, p.SpanId, p.TraceId)
	}
	if p.Kind != tracepb.Span_SPAN_KIND_SERVER || ch.Kind != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("kinds %v, %v", p.Kind, ch.Kind)
	}
	if ch.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || ch.Status.GetMessage() != "boom" {
		t.Errorf("child's status %v, want error boom", ch.Status)
	}
	if len(ch.Events) != 1 || ch.Events[0].Name != "retrying" {
		t.Errorf("child's events %v", ch.Events)
	}
	got := map[string]*commonpb.AnyValue{}
	for _, kv := range ch.Attributes {
		got[kv.Key] = kv.Value
	}
	if got["n"].GetIntValue() != 7 || !got["b"].GetBoolValue() || got["f"].GetDoubleValue() != 0.5 || got["s"].GetStringValue() != "x" ||
		len(got["ss"].GetArrayValue().GetValues()) != 2 || got["ss"].GetArrayValue().GetValues()[1].GetStringValue() != "b" {
		t.Errorf("child's attributes %v, want n=7, b=true, f=0.5, s=x, ss=[a b]", got)
	}
	if ch.StartTimeUnixNano == 0 || ch.EndTimeUnixNano < ch.StartTimeUnixNano {
		t.Errorf("child's times %d → %d", ch.StartTimeUnixNano, ch.EndTimeUnixNano)
	}
}

// TestNew_AFailedExportIsLogged: the collector's refusal reaches the log,
// with its status.
func TestNew_AFailedExportIsLogged(t *testing.T) {
	srv := httptest.NewServer(&collector{status: http.StatusServiceUnavailable})
	defer srv.Close()
	c, err := load(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": srv.URL + "/v1/traces"})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	tr := tracing.New(c, "v1", nil, slog.New(slog.NewJSONHandler(&logs, nil)))
	_, span := tr.Provider().Tracer("test").Start(t.Context(), "lost")
	span.End()
	_ = tr.Shutdown(t.Context())
	if !strings.Contains(logs.String(), "spans may be lost") || !strings.Contains(logs.String(), "503") {
		t.Errorf("logs %q, want a warning naming the collector's 503", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestNew_SamplersFollowTheConfiguration(t *testing.T) {
	remoteSampled := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	for _, tc := range []struct {
		sampler, arg      string
		root, underCaller bool // sampled: a root span, a span whose remote parent is sampled
	}{
		{"parentbased_always_on", "", true, true},
		{"parentbased_always_off", "", false, true},
		{"always_off", "", false, false},
		{"traceidratio", "0", false, false},
		{"parentbased_traceidratio", "0", false, true},
	} {
		t.Run(tc.sampler, func(t *testing.T) {
			c, err := load(map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": tc.sampler, "OTEL_TRACES_SAMPLER_ARG": tc.arg})
			if err != nil {
				t.Fatal(err)
			}
			tr := tracing.New(c, "v1", tracetest.NewInMemoryExporter(), slog.New(slog.DiscardHandler))
			defer func() { _ = tr.Shutdown(context.Background()) }()
			tracer := tr.Provider().Tracer("test")
			_, root := tracer.Start(t.Context(), "root")
			_, under := tracer.Start(trace.ContextWithRemoteSpanContext(t.Context(), remoteSampled), "under")
			if root.SpanContext().IsSampled() != tc.root || under.SpanContext().IsSampled() != tc.underCaller {
				t.Errorf("sampled: root %v, under a sampled caller %v; want %v, %v",
					root.SpanContext().IsSampled(), under.SpanContext().IsSampled(), tc.root, tc.underCaller)
			}
		})
	}
}

// recorder returns a tracer provider keeping its ended spans.
func recorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

func TestLogHandler_NamesTheSampledSpanOfTheContext(t *testing.T) {
	tp, _ := recorder(t)
	ctx, span := tp.Tracer("test").Start(t.Context(), "request")
	defer span.End()
	unsampled := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{2}, SpanID: trace.SpanID{2}}))

	for _, tc := range []struct {
		name     string
		ctx      context.Context
		wantIDs  bool
		loggedBy func(*slog.Logger, context.Context)
	}{
		{"InfoContext", ctx, true, func(l *slog.Logger, ctx context.Context) { l.InfoContext(ctx, "m") }},
		{"LogAttrs, With", ctx, true, func(l *slog.Logger, ctx context.Context) { l.With("k", "v").LogAttrs(ctx, slog.LevelInfo, "m") }},
		{"without the context", ctx, false, func(l *slog.Logger, _ context.Context) { l.Info("m") }},
		{"an unsampled span", unsampled, false, func(l *slog.Logger, ctx context.Context) { l.InfoContext(ctx, "m") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			tc.loggedBy(slog.New(tracing.LogHandler(slog.NewJSONHandler(&out, nil))), tc.ctx)
			line := out.String()
			hasIDs := strings.Contains(line, `"trace_id":"`+span.SpanContext().TraceID().String()+`"`) &&
				strings.Contains(line, `"span_id":"`+span.SpanContext().SpanID().String()+`"`)
			if hasIDs != tc.wantIDs || (!tc.wantIDs && strings.Contains(line, "trace_id")) {
				t.Errorf("line %s: want trace and span ids: %v", line, tc.wantIDs)
			}
		})
	}
}

func TestMiddleware_ContinuesTheCallersTraceAndLeavesOutWhatItSkips(t *testing.T) {
	tp, rec := recorder(t)
	var inner trace.SpanContext
	h := tracing.Middleware(tp, func(r *http.Request) bool { return r.URL.Path == "/skip" })(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner = trace.SpanContextFromContext(r.Context())
		status := http.StatusCreated
		if r.URL.Path == "/fail" {
			status = http.StatusBadGateway
		}
		tracing.Answered(r.Context(), r.Method, "/things/{id}", status)
		w.WriteHeader(status)
	}))

	req := httptest.NewRequest(http.MethodPost, "/things/1", nil)
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.ServeHTTP(httptest.NewRecorder(), req)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/fail", nil))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/skip", nil))

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2: the skipped request has none", len(spans))
	}
	if inner.IsValid() {
		t.Error("the skipped request's context has a span")
	}
	s := spans[0]
	if s.Name() != "POST /things/{id}" || s.SpanKind() != trace.SpanKindServer {
		t.Errorf("span %q, kind %v; want POST /things/{id}, server", s.Name(), s.SpanKind())
	}
	if s.Parent().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !s.Parent().IsRemote() {
		t.Errorf("parent %v: want the caller's span", s.Parent())
	}
	attrs := attribute.NewSet(s.Attributes()...)
	for key, want := range map[attribute.Key]string{"http.route": "/things/{id}", "http.request.method": "POST", "url.path": "/things/1"} {
		if v, _ := attrs.Value(key); v.AsString() != want {
			t.Errorf("%s = %q, want %q", key, v.AsString(), want)
		}
	}
	if v, _ := attrs.Value("http.response.status_code"); v.AsInt64() != 201 || s.Status().Code != codes.Unset {
		t.Errorf("status code %v, span status %v; want 201 and no error", v, s.Status())
	}
	if spans[1].Status().Code != codes.Error {
		t.Errorf("a 502's span status %v, want an error", spans[1].Status())
	}
}
