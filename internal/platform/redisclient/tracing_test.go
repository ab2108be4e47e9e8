package redisclient

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func spanRecorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// TestTrace_ACommandWithinASpanIsAClientSpanOfIt, through go-redis's own
// hooks: a command run within a span gets one, named after it and
// describing the client, its failure an error; one run outside gets none.
func TestTrace_ACommandWithinASpanIsAClientSpanOfIt(t *testing.T) {
	tp, rec := spanRecorder(t)
	rdb, err := New(Config{URL: "redis://127.0.0.1:1/3"}) // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	Trace(rdb, tp)

	_ = rdb.Ping(t.Context()).Err()
	ctx, request := tp.Tracer("test").Start(t.Context(), "request")
	if err := rdb.Get(ctx, "k").Err(); err == nil {
		t.Fatal("GET from a Redis that is down succeeded")
	}
	request.End()

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want the request's and its GET's (none for the PING outside it)", len(spans))
	}
	get := spans[0]
	a := attribute.NewSet(get.Attributes()...)
	want := map[attribute.Key]string{"db.system.name": "redis", "db.operation.name": "GET", "db.namespace": "3", "server.address": "127.0.0.1"}
	for k, v := range want {
		if got, _ := a.Value(k); got.String() != v {
			t.Errorf("%s = %q, want %q", k, got.String(), v)
		}
	}
	if get.Name() != "GET" || get.Parent().SpanID() != request.SpanContext().SpanID() || get.Status().Code != codes.Error {
		t.Errorf("span %q, parent %v, status %v; want GET, the request's child, an error", get.Name(), get.Parent().SpanID(), get.Status())
	}
}

// TestTracingHook_AMissIsNotAnError; a pipeline is one span.
func TestTracingHook_AMissIsNotAnErrorAndAPipelineIsOneSpan(t *testing.T) {
	tp, rec := spanRecorder(t)
	h := tracingHook{tracer: tp.Tracer("test")}
	ctx, request := tp.Tracer("test").Start(t.Context(), "request")
	miss := h.ProcessHook(func(_ context.Context, cmd redis.Cmder) error {
		cmd.SetErr(redis.Nil)
		return redis.Nil
	})
	if err := miss(ctx, redis.NewStringCmd(ctx, "get", "k")); !errors.Is(err, redis.Nil) {
		t.Fatalf("hook returned %v, want redis.Nil as the command did", err)
	}
	pipeline := h.ProcessPipelineHook(func(context.Context, []redis.Cmder) error { return nil })
	_ = pipeline(ctx, []redis.Cmder{redis.NewStatusCmd(ctx, "set", "a", "1"), redis.NewStatusCmd(ctx, "set", "b", "2")})
	request.End()

	spans := rec.Ended()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	if spans[0].Name() != "GET" || spans[0].Status().Code == codes.Error {
		t.Errorf("miss: span %q, status %v; want GET, not an error", spans[0].Name(), spans[0].Status())
	}
	set := attribute.NewSet(spans[1].Attributes()...)
	size, _ := set.Value("db.operation.batch.size")
	if spans[1].Name() != "PIPELINE" || size.AsInt64() != 2 {
		t.Errorf("pipeline: span %q, batch size %v; want PIPELINE, 2", spans[1].Name(), size.AsInt64())
	}
}
