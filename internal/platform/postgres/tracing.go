package postgres

import (
	"context"
	"errors"
	"strings"
	"unicode"

	"github.com/lib/pq"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Spans: in a traced pool, every statement, BEGIN, COMMIT and ROLLBACK
// run within a recording span gets a client span of its own, named after
// its first keyword (SELECT, INSERT, WITH, ...) and carrying its text.
// Never its arguments: they travel apart from the text, and hold the data.
//
// Statements run outside a span (migrations, readiness probes, the
// leader's lock, the replica's lag probe four times a second) get none: a
// trace each would bury the requests' traces.

// tracerName names the spans' instrumentation scope.
const tracerName = "github.com/resiliencekit/payservice/internal/platform/postgres"

// startSpan starts the span of query, or returns a nil span when tracer is
// nil or ctx has no recording span.
func startSpan(ctx context.Context, tracer trace.Tracer, query string) (context.Context, trace.Span) {
	if tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, nil
	}
	op := operation(query)
	return tracer.Start(ctx, op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		semconv.DBSystemNamePostgreSQL, semconv.DBOperationName(op), semconv.DBQueryText(query)))
}

// endSpan ends span, if any, with err.
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		if pqErr := (*pq.Error)(nil); errors.As(err, &pqErr) {
			span.SetAttributes(semconv.DBResponseStatusCode(string(pqErr.Code)))
		}
	}
	span.End()
}

// operation is the first word of query, in capitals: the kind of
// statement, bounded, for a span's name.
func operation(query string) string {
	q := strings.TrimLeft(query, " \t\r\n")
	end := strings.IndexFunc(q, func(r rune) bool { return !unicode.IsLetter(r) })
	if end < 0 {
		end = len(q)
	}
	if end == 0 {
		return "postgresql"
	}
	return strings.ToUpper(q[:end])
}
