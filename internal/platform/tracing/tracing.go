// Package tracing is the platform's distributed tracing, on OpenTelemetry:
// a tracer provider configured by the standard OTEL_* variables, spans
// exported in batches over OTLP/HTTP, the W3C trace context read from
// incoming requests, and the trace id written into log lines.
//
// It is off unless configured: without OTEL_TRACES_EXPORTER=otlp or an
// OTLP endpoint, New returns a nil *Tracing, whose Provider is nil, and a
// component given a nil provider starts no span and wraps nothing, so an
// untraced service pays nothing for the ability. The trade-off is the
// exporter: spans go out as OTLP protobuf over HTTP, encoded here with the
// OpenTelemetry project's own message types, rather than through the
// SDK's exporter packages, which link in gRPC (11 MB more binary, for a
// transport the service does not use). What that leaves out is OTLP over
// gRPC, retrying a failed batch, compression and custom TLS roots.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/platform/config"
)

// Config is the tracing configuration: the variables of the OpenTelemetry
// specification that tracing honours. The SDK reads a few more itself from
// the process's environment (OTEL_BSP_* for batching, OTEL_SPAN_*_LIMIT).
type Config struct {
	// Exporter is OTEL_TRACES_EXPORTER: otlp, none, or "" for on exactly
	// when an endpoint is set.
	Exporter string
	// Endpoint is an OTLP/HTTP base URL: spans go to its /v1/traces.
	Endpoint string
	// TracesEndpoint, when set, is the URL spans go to, as it is.
	TracesEndpoint string
	// Protocol and TracesProtocol can only be http/protobuf: they are
	// read so that grpc is refused at start-up, not failed at every export.
	Protocol, TracesProtocol string
	Headers                  Headers
	TimeoutMillis            int // one export's, in milliseconds as the specification has it
	ServiceName              string
	ResourceAttributes       Attributes
	Sampler                  string
	SamplerArg               float64 // the ratio of the traceidratio samplers
}

// DefaultConfig is the specification's defaults, for the named service.
func DefaultConfig(service string) Config {
	return Config{
		Protocol:      "http/protobuf",
		TimeoutMillis: 10_000,
		ServiceName:   service,
		Sampler:       "parentbased_always_on",
		SamplerArg:    1,
	}
}

var samplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// Bind declares the variables under their standard names (OTEL_...),
// after b's prefix, which should be empty.
func (c *Config) Bind(b *config.Binder) {
	b.OneOf("OTEL_TRACES_EXPORTER", &c.Exporter, []string{"otlp", "none"}, "tracing: otlp exports spans (to http://localhost:4318/v1/traces unless an endpoint is set), none turns it off; unset: on exactly when an endpoint is set")
	b.URL("OTEL_EXPORTER_OTLP_ENDPOINT", &c.Endpoint, []string{"http", "https"}, "OTLP/HTTP collector base URL, e.g. http://otel-collector:4318: spans go to its /v1/traces; setting it turns tracing on")
	b.URL("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &c.TracesEndpoint, []string{"http", "https"}, "full URL spans are sent to, used as it is; overrides OTEL_EXPORTER_OTLP_ENDPOINT")
	b.OneOf("OTEL_EXPORTER_OTLP_PROTOCOL", &c.Protocol, []string{"http/protobuf"}, "OTLP transport: http/protobuf only (grpc is refused)")
	b.OneOf("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &c.TracesProtocol, []string{"http/protobuf"}, "the same for traces; overrides OTEL_EXPORTER_OTLP_PROTOCOL")
	b.Value("OTEL_EXPORTER_OTLP_HEADERS", &c.Headers, "headers of every export, as key=value pairs, comma-separated, values percent-encoded (authorization=Bearer%20xyz); masked in logs")
	b.Int("OTEL_EXPORTER_OTLP_TIMEOUT", &c.TimeoutMillis, 1, 600_000, "milliseconds an export may take before its spans are dropped")
	b.String("OTEL_SERVICE_NAME", &c.ServiceName, "service.name of the spans")
	b.Value("OTEL_RESOURCE_ATTRIBUTES", &c.ResourceAttributes, "more attributes of the spans' resource, as key=value pairs, comma-separated (deployment.environment.name=prod)")
	b.OneOf("OTEL_TRACES_SAMPLER", &c.Sampler, samplers, "traces kept: always_on, always_off, traceidratio, or parentbased_ and one of them (a caller's traceparent decides when it has one)")
	b.Float("OTEL_TRACES_SAMPLER_ARG", &c.SamplerArg, 0, 1, "fraction of traces the traceidratio samplers keep")
}

// Enabled reports whether c turns tracing on.
func (c Config) Enabled() bool {
	switch c.Exporter {
	case "otlp":
		return true
	case "none":
		return false
	}
	return c.Endpoint != "" || c.TracesEndpoint != ""
}

// URL is where spans are sent: the specification's rules for the two
// endpoint variables, and its default.
func (c Config) URL() string {
	if c.TracesEndpoint != "" {
		return c.TracesEndpoint
	}
	base := c.Endpoint
	if base == "" {
		base = "http://localhost:4318"
	}
	return strings.TrimSuffix(base, "/") + "/v1/traces"
}

// Describe says, in a few words for the start-up log, whether tracing is
// on and where its spans go.
func (c Config) Describe() string {
	if !c.Enabled() {
		return "off"
	}
	s := "OTLP/HTTP to " + redacted(c.URL()) + ", sampler " + c.Sampler
	if strings.HasSuffix(c.Sampler, "traceidratio") {
		s += " " + strconv.FormatFloat(c.SamplerArg, 'g', -1, 64)
	}
	return s
}

// redacted is u with any password masked, for logs and errors.
func redacted(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}

func (c Config) sampler() sdktrace.Sampler {
	switch c.Sampler {
	case "always_on":
		return sdktrace.AlwaysSample()
	case "always_off":
		return sdktrace.NeverSample()
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(c.SamplerArg)
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample())
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SamplerArg))
	}
	return sdktrace.ParentBased(sdktrace.AlwaysSample())
}

// tracerName names the server spans' instrumentation scope.
const tracerName = "github.com/resiliencekit/payservice/internal/platform/tracing"

// Tracing is a running tracer provider. A nil *Tracing is tracing off:
// its methods are safe to call.
type Tracing struct {
	provider *sdktrace.TracerProvider
}

// New starts the tracing c configures, or returns nil when c leaves it
// off. Spans go to export when it is not nil (a test keeps them in memory
// so), and over OTLP/HTTP to c.URL() otherwise. version is the service's,
// for the spans' resource.
//
// Failed exports are logged to log as warnings: New makes log the
// OpenTelemetry SDK's error handler, which is one per process.
func New(c Config, version string, export sdktrace.SpanExporter, log *slog.Logger) *Tracing {
	if !c.Enabled() {
		return nil
	}
	if export == nil {
		export = newOTLPExporter(c.URL(), c.Headers.header(), time.Duration(c.TimeoutMillis)*time.Millisecond)
	}
	// The variables come first: OTEL_SERVICE_NAME wins over a
	// service.name in OTEL_RESOURCE_ATTRIBUTES, as the specification says.
	attrs := append(c.ResourceAttributes.attributes(),
		semconv.ServiceName(c.ServiceName),
		semconv.ServiceVersion(version),
		semconv.TelemetrySDKLanguageGo,
		semconv.TelemetrySDKName("opentelemetry"),
		semconv.TelemetrySDKVersion(sdk.Version()),
	)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans may be lost", "err", err)
	}))
	return &Tracing{provider: sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(export),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, attrs...)),
		sdktrace.WithSampler(c.sampler()),
	)}
}

// Provider returns the tracer provider for the components to start spans
// with, or nil when tracing is off.
func (t *Tracing) Provider() trace.TracerProvider {
	if t == nil {
		return nil
	}
	return t.provider
}

// Shutdown exports the spans still waiting in the batch and stops the
// provider, within ctx. Later calls do nothing.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: spans not exported at shutdown: %w", err)
	}
	return nil
}

// Propagator reads and writes the W3C trace context (traceparent,
// tracestate) and baggage headers.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Middleware gives every request a server span, continuing the trace of
// its traceparent header, except the requests skip picks. The span starts
// named after the method alone: only the router knows the route pattern,
// and it completes the span once the request is answered (Answered).
func Middleware(tp trace.TracerProvider, skip func(*http.Request) bool) func(http.Handler) http.Handler {
	tracer := tp.Tracer(tracerName)
	propagator := Propagator()
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if skip(r) {
				next.ServeHTTP(w, r)
				return
			}
			ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			ctx, span := tracer.Start(ctx, "HTTP", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
				semconv.HTTPRequestMethodKey.String(r.Method),
				semconv.URLPath(r.URL.Path),
				semconv.URLScheme(scheme(r)),
				semconv.ServerAddress(r.Host),
				semconv.NetworkProtocolVersion(strings.TrimPrefix(r.Proto, "HTTP/")),
				semconv.ClientAddress(host(r.RemoteAddr)),
				semconv.UserAgentOriginal(r.UserAgent()),
			))
			defer span.End()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// Answered completes the server span in ctx, if it is recording, with
// what the router learnt: its name becomes method and route pattern
// ("POST /v1/things/{id}"; the method alone when no route matched), and
// the status answered, an error from 500 on. method must be bounded (an
// unknown one mapped to a placeholder): it names the span.
func Answered(ctx context.Context, method, pattern string, status int) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	name := method
	if pattern != "" {
		name += " " + pattern
		span.SetAttributes(semconv.HTTPRoute(pattern))
	}
	span.SetName(name)
	span.SetAttributes(semconv.HTTPResponseStatusCode(status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
}

// TraceID returns the id of the trace of ctx's span, and whether that
// span is sampled (its trace is exported, so the id leads somewhere).
func TraceID(ctx context.Context) (string, bool) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsSampled() {
		return "", false
	}
	return sc.TraceID().String(), true
}
