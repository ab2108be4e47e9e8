package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// TestOpenPools_TracedStatementsAreSpansOfTheirCaller: in a traced pool,
// each statement, BEGIN and COMMIT run within a span is a client span
// under it, with the statement's text but never its arguments; a failed
// statement's span says how it failed; a statement outside any span
// makes none.
func TestOpenPools_TracedStatementsAreSpansOfTheirCaller(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	cfg := postgres.DefaultConfig()
	cfg.URL = testenv.NewDatabase(t)
	pool, _, err := postgres.OpenPools(cfg, tp, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	if _, err := pool.ExecContext(ctx, "CREATE TABLE things (name text)"); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans for a statement outside any span, want 0", n)
	}

	ctx, request := tp.Tracer("test").Start(ctx, "request")
	tx, err := pool.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO things (name) VALUES ($1)", "s3cret argument"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var name string
	if err := pool.QueryRowContext(ctx, "  select name from things").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.ExecContext(ctx, "INSERT INTO nowhere VALUES (1)"); err == nil {
		t.Fatal("an insert into a missing table succeeded")
	}
	request.End()

	var got []string
	for _, s := range rec.Ended() {
		if s.Name() == "request" {
			continue
		}
		a := attribute.NewSet(s.Attributes()...)
		system, _ := a.Value("db.system.name")
		text, _ := a.Value("db.query.text")
		if s.Parent().SpanID() != request.SpanContext().SpanID() || system.AsString() != "postgresql" {
			t.Errorf("span %s: parent %v, db.system.name %q; want the request's child, postgresql", s.Name(), s.Parent().SpanID(), system.AsString())
		}
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.String(), "s3cret") {
				t.Errorf("span %s: attribute %s holds an argument: %s", s.Name(), kv.Key, kv.Value.String())
			}
		}
		got = append(got, s.Name()+" "+text.AsString())
		if strings.Contains(text.AsString(), "nowhere") {
			code, _ := a.Value("db.response.status_code")
			if s.Status().Code != codes.Error || code.AsString() != "42P01" {
				t.Errorf("failed statement's span: status %v, db.response.status_code %q; want an error, 42P01", s.Status(), code.AsString())
			}
		}
	}
	want := []string{
		"BEGIN BEGIN",
		"INSERT INSERT INTO things (name) VALUES ($1)",
		"COMMIT COMMIT",
		"SELECT   select name from things",
		"INSERT INSERT INTO nowhere VALUES (1)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("spans (name, db.query.text):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
