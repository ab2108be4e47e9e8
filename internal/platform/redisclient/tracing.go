package redisclient

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the spans' instrumentation scope.
const tracerName = "github.com/resiliencekit/payservice/internal/platform/redisclient"

// Trace makes rdb record a client span for each command, and each
// pipeline, run within a recording span, when tp is not nil. A span is
// named after its command (GET, EVALSHA) and carries no arguments: they
// hold the data. Commands outside a span (readiness pings) get none: a
// trace each would bury the requests' traces. A miss (redis.Nil) is an
// answer, not an error.
func Trace(rdb *redis.Client, tp trace.TracerProvider) {
	if tp == nil {
		return
	}
	opts := rdb.Options()
	attrs := []attribute.KeyValue{semconv.DBSystemNameRedis, semconv.DBNamespace(strconv.Itoa(opts.DB))}
	if host, port, err := net.SplitHostPort(opts.Addr); err == nil {
		attrs = append(attrs, semconv.ServerAddress(host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, semconv.ServerPort(p))
		}
	}
	rdb.AddHook(tracingHook{tracer: tp.Tracer(tracerName), attrs: attrs})
}

type tracingHook struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue // the client's, on every span
}

func (h tracingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h tracingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !trace.SpanFromContext(ctx).IsRecording() {
			return next(ctx, cmd)
		}
		op := strings.ToUpper(cmd.FullName())
		ctx, span := h.start(ctx, op, semconv.DBOperationName(op))
		err := next(ctx, cmd)
		end(span, err)
		return err
	}
}

func (h tracingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !trace.SpanFromContext(ctx).IsRecording() {
			return next(ctx, cmds)
		}
		ctx, span := h.start(ctx, "PIPELINE", semconv.DBOperationBatchSize(len(cmds)))
		err := next(ctx, cmds)
		end(span, err)
		return err
	}
}

func (h tracingHook) start(ctx context.Context, name string, attr attribute.KeyValue) (context.Context, trace.Span) {
	return h.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(h.attrs...), trace.WithAttributes(attr))
}

func end(span trace.Span, err error) {
	if err != nil && !errors.Is(err, redis.Nil) {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
