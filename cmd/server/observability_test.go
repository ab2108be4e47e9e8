//go:build prometheus

// The live observability test needs Prometheus's own binaries, which `make
// test` does not: it runs with `make observability-e2e` (-tags prometheus).

package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
	"github.com/resiliencekit/payservice/observability"
)

// rateInterval replaces Grafana's $__rate_interval in panel queries: what
// Grafana would choose for a 1s scrape interval is 4s; a minute spans
// every phase of the load.
const rateInterval = "1m"

// TestObservability_EveryPanelAndRuleQueryReturnsData runs the service
// under a load that takes every resilience pattern through its states,
// scraped by a real Prometheus evaluating the service's rules, and runs
// every query of every dashboard panel and every rule over the whole run.
// A query that returns no series at all names a metric or a label the
// service does not have: the panel would stay empty, the alert silent.
//
// The load's own effects are checked the same way first (loadEvidence):
// when one is missing, the load, not the dashboard, needs fixing.
func TestObservability_EveryPanelAndRuleQueryReturnsData(t *testing.T) {
	queries, err := observability.Queries()
	if err != nil {
		t.Fatalf("observability.Queries: %v", err)
	}
	if len(queries) == 0 {
		t.Fatal("observability.Queries returned no query: nothing would be checked")
	}
	rules, err := observability.RulesYAML()
	if err != nil {
		t.Fatalf("observability.RulesYAML: %v", err)
	}
	prometheusBinaries(t) // before any container starts

	o := startObserved(t)
	begin := time.Now()
	prom := startPrometheus(t, strings.TrimPrefix(o.srv.admin, "http://"), rules)
	prom.waitScraped(t, begin)

	o.becomeReady(t, prom)
	o.serveEveryRoute(t)
	o.fillTheBulkhead(t, prom)
	o.tripTheBreaker(t, prom)
	o.exceedTheRateLimit(t)
	o.loseRedis(t, prom)
	o.awaitReconciliation(t)

	scraped := prom.waitScraped(t, time.Now())
	failures := prom.waitEvaluated(t, scraped) // rules that fail to evaluate
	run := window{start: begin, end: time.Now(), step: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	checks := append(loadEvidence(), queries...)
	for _, q := range checks {
		expr := strings.NewReplacer("${__rate_interval}", rateInterval, "$__rate_interval", rateInterval).Replace(q.Expr)
		found, err := prom.queryRange(ctx, expr, run)
		switch {
		case err != nil:
			failures = append(failures, fmt.Sprintf("%s: %v\n\t%s", q.Where, err, q.Expr))
		case !found:
			failures = append(failures, fmt.Sprintf("%s: no data\n\t%s", q.Where, q.Expr))
		}
	}
	if len(failures) > 0 {
		names, err := prom.metricNames(ctx, run)
		if err != nil {
			t.Errorf("the service's metric names: %v", err)
		}
		t.Errorf("%d problems over the %s run, %d queries checked. A \"load:\" query without data means the load "+
			"missed what it meant to cause; any other, a panel or rule that queries a metric or label the service "+
			"does not have:\n%s\n\nthe service's metrics:\n\t%s",
			len(failures), run.end.Sub(run.start).Round(time.Second), len(checks),
			strings.Join(failures, "\n"), strings.Join(names, "\n\t"))
		return
	}
	t.Logf("%d queries returned data over the %s run: %d of the dashboard and the rules, %d the load's own",
		len(checks), run.end.Sub(run.start).Round(time.Second), len(queries), len(checks)-len(queries))
}

// loadEvidence is what the load makes happen, each as a query that returns
// data only if it did.
func loadEvidence() []observability.Query {
	evidence := []struct{ what, expr string }{
		{"not ready before the database exists", `payservice_health_ready == 0`},
		{"readiness changed", `payservice_health_ready_changes_total > 0`},
		{"a readiness check failed", `payservice_health_check_up == 0`},
		{"a payment created", `payservice_http_requests_total{route="/v1/payments",method="POST",code="201"} > 0`},
		{"a payment declined", `payservice_http_requests_total{route="/v1/payments",method="POST",code="402"} > 0`},
		{"a payment left processing", `payservice_http_requests_total{route="/v1/payments",method="POST",code="202"} > 0`},
		{"a payment refused, 503", `payservice_http_requests_total{route="/v1/payments",method="POST",code="503"} > 0`},
		{"a payment read", `payservice_http_request_duration_seconds_count{route="/v1/payments/{id}",method="GET",code="200"} > 0`},
		{"a payment not found", `payservice_http_requests_total{route="/v1/payments/{id}",method="GET",code="404"} > 0`},
		{"payments listed", `payservice_http_requests_total{route="/v1/payments",method="GET",code="200"} > 0`},
		{"a refund created", `payservice_http_requests_total{route="/v1/payments/{id}/refunds",method="POST",code="201"} > 0`},
		{"a refund refused", `payservice_http_requests_total{route="/v1/payments/{id}/refunds",method="POST",code="422"} > 0`},
		{"refunds listed", `payservice_http_requests_total{route="/v1/payments/{id}/refunds",method="GET",code="200"} > 0`},
		{"a request unauthenticated", `payservice_http_requests_total{code="401"} > 0`},
		{"the provider breaker open", `payservice_breaker_state{name="provider"} == 2`},
		{"the provider breaker closed again", `payservice_breaker_transitions_total{name="provider",to="closed"} > 0`},
		{"an attempt retried", `payservice_retry_attempts_total{name="provider",outcome="retried"} > 0`},
		{"retries given up after the last attempt", `payservice_retry_attempts_total{name="provider",outcome="final_attempts"} > 0`},
		{"the retry budget exhausted", `payservice_retry_budget_exhausted_total{name="provider"} > 0`},
		{"a call in the bulkhead", `payservice_bulkhead_in_flight{name="provider"} > 0`},
		{"a call queued in the bulkhead", `payservice_bulkhead_queue_depth{name="provider"} > 0`},
		{"a call refused by the full bulkhead", `payservice_bulkhead_rejections_total{name="provider",reason="full"} > 0`},
		{"a client rate limited", `payservice_ratelimit_rejections_total{name="clients"} > 0`},
		{"a client rate limited, by client", `payservice_http_ratelimited_total{client="client_b"} > 0`},
		{"a new idempotency key", `payservice_idempotency_total{outcome="new"} > 0`},
		{"a replay", `payservice_idempotency_total{outcome="replay"} > 0`},
		{"a key in flight", `payservice_idempotency_total{outcome="in_flight"} > 0`},
		{"a key reused for another request", `payservice_idempotency_total{outcome="mismatch"} > 0`},
		{"the idempotency fast path failing", `payservice_idempotency_store_errors_total > 0`},
		{"a payment reconciled", `payservice_reconciler_payments_total{result="succeeded"} > 0`},
		{"the reconciler leading", `payservice_reconciler_leader == 1`},
		{"the reconciler's backlog", `payservice_reconciler_backlog`},
		{"the reconciler's oldest payment", `payservice_reconciler_oldest_seconds`},
		{"the primary's pool", `go_sql_open_connections{db_name="primary"} > 0`},
		{"the replica's pool", `go_sql_open_connections{db_name="replica"} > 0`},
		{"a read on the replica", `payservice_postgres_reads_total{pool="replica"} > 0`},
		{"the replica's lag", `payservice_postgres_replica_lag_seconds`},
		{"the Redis pool", `{__name__=~"payservice_redis_pool_.+"}`},
	}
	qs := make([]observability.Query, len(evidence))
	for i, e := range evidence {
		qs[i] = observability.Query{Where: "load: " + e.what, Expr: e.expr}
	}
	return qs
}

// observed is the service as this test runs it: a Postgres primary and a
// standby streaming from it (reads go to the replica), a Redis of its own
// (it is stopped), and the fake provider behind a spy that can hold a
// charge's answer.
type observed struct {
	srv     *instance
	spy     *providerSpy
	redis   *testenv.Redis
	primary string // the pair's maintenance database, for CREATE DATABASE
}

// startObserved starts the service with settings that let the load take
// each protection through its states within seconds. Its database does not
// exist yet: it starts not ready.
func startObserved(t *testing.T) *observed {
	t.Helper()
	pair := testenv.NewPair(t)
	redis := testenv.NewRedis(t)
	spy := &providerSpy{fake: fakeprovider.New(), posts: map[string]int{}}
	provider := httptest.NewServer(spy)
	t.Cleanup(provider.Close)
	t.Cleanup(spy.release) // a held answer never outlives the test
	srv := startRun(t, map[string]string{
		"DATABASE_URL":         withDatabase(t, pair.PrimaryURL, "payservice"),
		"DATABASE_REPLICA_URL": withDatabase(t, pair.StandbyURL, "payservice"),
		"REDIS_URL":            redis.URL(),
		"PROVIDER_URL":         provider.URL,
		"API_KEYS":             "client_a:key_a,client_b:key_b",
		"SHUTDOWN_DRAIN_DELAY": "0s",
		// The load stays under it; client_b's flood goes over.
		"RATE_LIMIT_PER_SECOND": "50",
		"RATE_LIMIT_BURST":      "100",
		// Short, so that the reconciler settles within the test; a held
		// charge has seconds before its attempt times out.
		"REQUEST_TIMEOUT":    "6s",
		"PROVIDER_TIMEOUT":   "4s",
		"SETTLE_TIMEOUT":     "250ms",
		"RECONCILE_INTERVAL": "200ms",
		"RECONCILE_AFTER":    "6500ms",
		// Opens after a few failures; stays open over a scrape or two.
		"PROVIDER_BREAKER_MIN_REQUESTS":     "4",
		"PROVIDER_BREAKER_OPEN_TIMEOUT":     "2s",
		"PROVIDER_BREAKER_HALF_OPEN_PROBES": "1",
		// Two attempts a call, and one retry in the budget for the whole
		// run: the first failing call retries, the next finds it empty.
		"PROVIDER_RETRY_MAX_ATTEMPTS":          "2",
		"PROVIDER_RETRY_BUDGET_RATIO":          "0",
		"PROVIDER_RETRY_BUDGET_MIN_PER_SECOND": "0",
		"PROVIDER_RETRY_BUDGET_CAPACITY":       "1",
		// A held call and a queued one fill it.
		"PROVIDER_BULKHEAD_CONCURRENCY": "1",
		"PROVIDER_BULKHEAD_QUEUE":       "1",
		// Closes soon after Redis is back.
		"REDIS_BREAKER_OPEN_TIMEOUT": "1s",
	})
	return &observed{srv: srv, spy: spy, redis: redis, primary: pair.PrimaryURL}
}

// withDatabase returns the Postgres URL raw with its database replaced.
func withDatabase(t *testing.T, raw, name string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// becomeReady has Prometheus see the service not ready, then creates its
// database (the standby replays it) and waits until the service is ready.
func (o *observed) becomeReady(t *testing.T, prom *promServer) {
	t.Helper()
	if r := callAdmin(t, o.srv.admin+"/health/ready"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("readiness without a database: %d %s, want 503", r.status, r.body)
	}
	prom.waitScraped(t, time.Now())
	pool, err := sql.Open("postgres", o.primary)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(`CREATE DATABASE payservice`); err != nil {
		t.Fatal(err)
	}
	waitReady(t, o.srv.api)
}

// serveEveryRoute sends a request of every route, with the answers a
// client meets every day.
func (o *observed) serveEveryRoute(t *testing.T) {
	t.Helper()
	paid := pay(t, o.srv, "key_a", "paid", body1000)
	if paid.status != http.StatusCreated {
		t.Fatalf("a payment: %d %s", paid.status, paid.body)
	}
	payment := o.srv.api + "/v1/payments/" + decodePayment(t, paid).ID
	for _, r := range []struct {
		what, method, url, key, idemKey, body string
		want                                  int
	}{
		{"a replay", http.MethodPost, o.srv.api + "/v1/payments", "key_a", "paid", body1000, 201},
		{"the key reused for another payment", http.MethodPost, o.srv.api + "/v1/payments", "key_a", "paid", `{"amount":999,"currency":"usd"}`, 422},
		{"a declined payment", http.MethodPost, o.srv.api + "/v1/payments", "key_a", "declined", `{"amount":1402,"currency":"usd"}`, 402},
		{"no credentials", http.MethodGet, o.srv.api + "/v1/payments", "", "", "", 401},
		{"the payment", http.MethodGet, payment, "key_a", "", "", 200},
		{"another client's payment", http.MethodGet, payment, "key_b", "", "", 404},
		{"the payments", http.MethodGet, o.srv.api + "/v1/payments?limit=10", "key_a", "", "", 200},
		{"a refund", http.MethodPost, payment + "/refunds", "key_a", "refund", `{"amount":400}`, 201},
		{"a refund of more than is left", http.MethodPost, payment + "/refunds", "key_a", "refund-2", `{"amount":700}`, 422},
		{"the refunds", http.MethodGet, payment + "/refunds", "key_a", "", "", 200},
	} {
		if got := call(t, r.method, r.url, r.key, r.idemKey, r.body); got.status != r.want {
			t.Fatalf("%s: %d %s, want %d", r.what, got.status, got.body, r.want)
		}
	}
}

// fillTheBulkhead leaves a payment's outcome unknown (its call retried
// once, then gave up). Then it holds a charge at the provider (a retry of
// that payment finds it in flight), queues another payment behind it, and
// retries the unknown one meanwhile: the full bulkhead refuses its call.
func (o *observed) fillTheBulkhead(t *testing.T, prom *promServer) {
	t.Helper()
	const unknown = "unknown"
	o.faults(t, fakeprovider.Faults{ChargeThenErrorRate: 1})
	if r := pay(t, o.srv, "key_a", unknown, body1000); r.status != http.StatusAccepted {
		t.Fatalf("charged, then 500 twice: %d %s, want 202", r.status, r.body)
	}
	o.spy.fake.ResetFaults()

	held := o.spy.holdNext()
	var wg sync.WaitGroup
	answers := make(chan response, 2)
	wg.Go(func() { answers <- pay(t, o.srv, "key_a", "held", body1000) })
	<-held
	if r := pay(t, o.srv, "key_a", "held", body1000); r.status != http.StatusConflict {
		t.Errorf("the held payment retried: %d %s, want 409 (in flight)", r.status, r.body)
	}
	wg.Go(func() { answers <- pay(t, o.srv, "key_a", "queued", body1000) })
	const queued = `payservice_bulkhead_queue_depth{name="provider"} 1`
	waitFor(t, "a payment queued in the bulkhead", func() bool { return metricLine(t, o.srv.admin, queued) == queued })
	// Resumed work passes the shedding a new payment meets, and reaches
	// the bulkhead.
	if r := pay(t, o.srv, "key_a", unknown, body1000); r.status != http.StatusServiceUnavailable {
		t.Errorf("a payment retried while the bulkhead is full: %d %s, want 503", r.status, r.body)
	}
	prom.waitScraped(t, time.Now()) // the bulkhead seen full
	o.spy.release()
	wg.Wait()
	close(answers)
	for r := range answers {
		if r.status != http.StatusCreated {
			t.Errorf("a payment through the bulkhead: %d %s, want 201", r.status, r.body)
		}
	}
}

// tripTheBreaker has the provider fail every charge (after making it)
// until the breaker opens, lets Prometheus see it open, then heals the
// provider and pays until the breaker has closed again. The payments left
// processing are for the reconciler.
func (o *observed) tripTheBreaker(t *testing.T, prom *promServer) {
	t.Helper()
	o.faults(t, fakeprovider.Faults{ChargeThenErrorRate: 1})
	opened := false
	for i := range 10 {
		r := pay(t, o.srv, "key_a", fmt.Sprint("outage-", i), body1000)
		if r.status == http.StatusServiceUnavailable {
			opened = true
			break
		}
		if r.status != http.StatusAccepted {
			t.Fatalf("payment %d during the outage: %d %s, want 202 until the breaker opens", i, r.status, r.body)
		}
	}
	if !opened {
		t.Fatal("the breaker did not open within 10 failing payments")
	}
	prom.waitScraped(t, time.Now()) // within the open timeout
	o.spy.fake.ResetFaults()
	n := 0
	paced(t, "the breaker to let a probe through and close", func() bool {
		n++
		return pay(t, o.srv, "key_a", fmt.Sprint("recovered-", n), body1000).status == http.StatusCreated
	})
}

// exceedTheRateLimit has client_b list payments from several connections
// at once until it is refused.
func (o *observed) exceedTheRateLimit(t *testing.T) {
	t.Helper()
	ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if r := call(t, http.MethodGet, o.srv.api+"/v1/payments?limit=1", "key_b", "", ""); r.status == http.StatusTooManyRequests {
					stop()
				}
			}
		})
	}
	wg.Wait()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("client_b was never refused (429) in 20s of listing payments from 8 connections")
	}
}

// loseRedis stops Redis until readiness shows it degraded and Prometheus
// has seen that, pays through Postgres alone meanwhile, then starts Redis
// again.
func (o *observed) loseRedis(t *testing.T, prom *promServer) {
	t.Helper()
	ctx := context.Background()
	if err := o.redis.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readiness to see Redis down", func() bool {
		_, checks := readiness(t, o.srv.api)
		return checks["redis"] != "ok"
	})
	for i := range 3 {
		if r := pay(t, o.srv, "key_a", fmt.Sprint("no-redis-", i), body1000); r.status != http.StatusCreated {
			t.Fatalf("a payment with Redis down: %d %s, want 201", r.status, r.body)
		}
	}
	prom.waitScraped(t, time.Now())
	if err := o.redis.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readiness to see Redis again", func() bool {
		_, checks := readiness(t, o.srv.api)
		return checks["redis"] == "ok"
	})
}

// awaitReconciliation waits until the reconciler has settled a payment
// left processing.
func (o *observed) awaitReconciliation(t *testing.T) {
	t.Helper()
	const settled = `payservice_reconciler_payments_total{result="succeeded"} `
	waitFor(t, "the reconciler to settle a payment", func() bool {
		line := metricLine(t, o.srv.admin, settled)
		return line != "" && line != settled+"0"
	})
}

func (o *observed) faults(t *testing.T, f fakeprovider.Faults) {
	t.Helper()
	if err := o.spy.fake.SetFaults(f); err != nil {
		t.Fatal(err)
	}
}

// paced is waitFor for conditions that send API requests: at most ten a
// second, well under the rate limit the load must stay under.
func paced(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
