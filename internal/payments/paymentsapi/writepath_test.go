package paymentsapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/health"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// roundTrips counts a Redis client's round trips: one per command, one per
// pipeline.
type roundTrips struct{ n atomic.Int64 }

func (c *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}
func (c *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}

// TestWritePath_CostsTwoCommitsAndTwoRedisRoundTrips counts what the write
// path sends to Postgres and Redis, through the real router, guard, store
// and provider client: a new payment (or refund) takes at most two commits
// (its claim, its settlement) and two Redis round trips (one script to look
// the key up or lock it, one to store the answer and unlock); a replay
// takes one Redis round trip and nothing from Postgres.
func TestWritePath_CostsTwoCommitsAndTwoRedisRoundTrips(t *testing.T) {
	pool, spy := testenv.OpenSpied(t, testenv.NewDatabase(t, idempotency.Migrations, paymentsdb.Migrations))
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	redisTrips := &roundTrips{}
	rdb.AddHook(redisTrips)
	_, providerURL := fakeprovider.Start(t)
	client, err := provider.NewClient(provider.Config{BaseURL: providerURL, AttemptTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	metrics, err := idempotency.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name: "redis", Window: 10 * time.Second, MinRequests: 5, FailureRatio: 0.5, OpenTimeout: time.Second, HalfOpenProbes: 1,
	}, idempotency.RedisOutcome, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	svc := payments.NewService(payments.Config{
		Store:    paymentsdb.New(pool, nil, &idempotency.Keys{Lease: time.Minute, Metrics: metrics}),
		Provider: client, Views: Views{ProblemTypes: testProblemTypes},
		Lease: time.Minute, SettleTimeout: time.Second, Log: log,
	})
	guard := &idempotency.Guard{
		Cache:   idempotency.NewCache(rdb, idempotency.CacheSettings{Prefix: "test", ResponseTTL: time.Hour, Timeout: time.Second}, breaker),
		Metrics: metrics, Log: log, LockTTL: time.Minute,
	}
	probes := health.New(time.Second, log)
	handler := spec.Handler(t, web.NewRouter(web.RouterConfig{
		Auth:        web.NewAuthenticator("test", map[string]string{"client_a": "key_a"}),
		ClientLimit: unlimited{}, AnonymousLimit: unlimited{},
		Ready: func() bool { return true }, Live: probes.Live, ReadyProbe: probes.Ready,
		Log: log, Metrics: prometheus.NewRegistry(), RequestTimeout: 10 * time.Second, ProblemTypes: testProblemTypes,
	}, Routes(Config{Service: svc, Guard: guard, Log: log})))

	post := func(path, key, body string) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer key_a")
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Idempotency-Key", key)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, r)
		return rec
	}
	// One payment first, not counted: go-redis loads the scripts on first
	// use (EVALSHA, then EVAL), which a running server has long done.
	if rec := post("/v1/payments", "warm-up", `{"amount":100,"currency":"usd"}`); rec.Code != http.StatusCreated {
		t.Fatalf("warm-up: %d %s", rec.Code, rec.Body)
	}

	var paymentID string
	for _, step := range []struct {
		name              string
		send              func() *httptest.ResponseRecorder
		wantStatus        int
		replayed          bool
		commits, postgres int // at most
		redis             int // exactly
	}{
		{"new payment", func() *httptest.ResponseRecorder {
			return post("/v1/payments", "p", `{"amount":1000,"currency":"usd"}`)
		}, http.StatusCreated, false, 2, 2, 2},
		{"payment replay", func() *httptest.ResponseRecorder {
			return post("/v1/payments", "p", `{"amount":1000,"currency":"usd"}`)
		}, http.StatusCreated, true, 0, 0, 1},
		// A refund reserves its amount under the payment's row lock and
		// releases it as it settles: a transaction each, one commit each.
		{"new refund", func() *httptest.ResponseRecorder {
			return post("/v1/payments/"+paymentID+"/refunds", "r", `{"amount":400}`)
		}, http.StatusCreated, false, 2, 8, 2},
		{"refund replay", func() *httptest.ResponseRecorder {
			return post("/v1/payments/"+paymentID+"/refunds", "r", `{"amount":400}`)
		}, http.StatusCreated, true, 0, 0, 1},
	} {
		spy.Reset()
		redisTrips.n.Store(0)
		rec := step.send()
		if rec.Code != step.wantStatus || (rec.Header().Get("Idempotent-Replayed") == "true") != step.replayed {
			t.Fatalf("%s: %d %v %s", step.name, rec.Code, rec.Header(), rec.Body)
		}
		if paymentID == "" {
			var p struct{ ID string }
			_ = json.Unmarshal(rec.Body.Bytes(), &p)
			paymentID = p.ID
		}
		statements := spy.Statements()
		commits, trips := spy.Commits(), redisTrips.n.Load()
		t.Logf("%s: %d Postgres statements (%d commits), %d Redis round trips", step.name, len(statements), commits, trips)
		if commits > step.commits || len(statements) > step.postgres {
			t.Errorf("%s: %d commits in %d statements, want at most %d in %d:\n%v", step.name, commits, len(statements), step.commits, step.postgres, statements)
		}
		if trips != int64(step.redis) {
			t.Errorf("%s: %d Redis round trips, want %d", step.name, trips, step.redis)
		}
	}
}
