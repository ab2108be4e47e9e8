package fakeprovider

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TraceID returns the id of the trace a request's W3C traceparent header
// names, or "" when it has none (or an invalid one): what a provider's
// log line needs to be found from the caller's trace.
func TraceID(h http.Header) string {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(h))
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return sc.TraceID().String()
}
