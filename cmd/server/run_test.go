package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// instance is run() in a goroutine.
type instance struct {
	api, admin string // base URLs
	logs       *testenv.Logs
	stop       context.CancelFunc
	done       chan error
}

// startRun calls run with env (plus loopback addresses on free ports) and
// waits until both servers listen.
func startRun(t *testing.T, env map[string]string) *instance {
	t.Helper()
	full := map[string]string{"HTTP_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0"}
	for k, v := range env {
		full[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &instance{logs: &testenv.Logs{}, stop: cancel, done: make(chan error, 1)}
	var stderr bytes.Buffer
	go func() { s.done <- run(ctx, nil, func(k string) string { return full[k] }, s.logs, &stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("run returned %v after cancellation, want nil: a cancelled context is a clean shutdown", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not return within 30s of cancellation")
		}
	})
	addr := func(name string) string {
		l := s.logs.WaitFor(t, "listening "+name, func(l map[string]any) bool { return l["msg"] == "listening" && l["server"] == name })
		return "http://" + l["addr"].(string)
	}
	s.api, s.admin = addr("api"), addr("admin")
	return s
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// call sends a request to the public API, and checks it and its answer
// against the OpenAPI description.
func call(t *testing.T, method, url, key, idemKey, body string) response {
	t.Helper()
	return send(t, apiClient(t), method, url, key, idemKey, body)
}

// apiClient is a client whose exchanges are checked against the OpenAPI
// description, and reported to t.
func apiClient(t *testing.T) *http.Client {
	return &http.Client{Transport: spec.Transport(t, nil)}
}

// callAdmin sends a GET to the admin port, which the public API's
// description does not cover.
func callAdmin(t *testing.T, url string) response {
	t.Helper()
	return send(t, http.DefaultClient, http.MethodGet, url, "", "", "")
}

func send(t *testing.T, client *http.Client, method, url, key, idemKey, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, data}
}

func readiness(t *testing.T, base string) (int, map[string]string) {
	t.Helper()
	r := call(t, http.MethodGet, base+"/health/ready", "", "", "")
	var body struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("readiness body %s: %v", r.body, err)
	}
	return r.status, body.Checks
}

func TestRun_MigratesTurnsReadyServesAndStops(t *testing.T) {
	dbURL, createDB := testenv.NewDatabaseLater(t)
	fake, providerURL := fakeprovider.Start(t)
	s := startRun(t, map[string]string{
		"DATABASE_URL":         dbURL,
		"REDIS_URL":            testenv.RedisURL(t),
		"PROVIDER_URL":         providerURL,
		"API_KEYS":             "client_a:key_a",
		"SHUTDOWN_DRAIN_DELAY": "100ms",
		"SHUTDOWN_TIMEOUT":     "5s",
	})

	// Alive at once; not ready while its database does not exist.
	if r := call(t, http.MethodGet, s.api+"/health/live", "", "", ""); r.status != 200 {
		t.Fatalf("live: %d", r.status)
	}
	status, checks := readiness(t, s.api)
	if status != 503 || checks["migrations"] != "pending" || !strings.HasPrefix(checks["postgres"], "unavailable") {
		t.Fatalf("ready before the database exists: %d %v; want 503, migrations pending, postgres unavailable", status, checks)
	}
	if r := call(t, http.MethodPost, s.api+"/v1/payments", "key_a", "k1", `{"amount":1000,"currency":"usd"}`); r.status != 503 {
		t.Fatalf("POST before migrations: %d, want 503", r.status)
	}

	createDB()
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, checks = readiness(t, s.api)
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready 30s after the database appeared: %v", checks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []string{"migrations", "postgres", "redis"} {
		if checks[c] != "ok" {
			t.Errorf("check %s = %q, want ok", c, checks[c])
		}
	}

	// A payment, end to end, and its replay.
	first := call(t, http.MethodPost, s.api+"/v1/payments", "key_a", "k1", `{"amount":1000,"currency":"usd"}`)
	if first.status != 201 {
		t.Fatalf("POST: %d %s", first.status, first.body)
	}
	var p struct{ ID, Status string }
	if err := json.Unmarshal(first.body, &p); err != nil || p.Status != "succeeded" {
		t.Fatalf("payment %s: %v", first.body, err)
	}
	replay := call(t, http.MethodPost, s.api+"/v1/payments", "key_a", "k1", `{"currency":"usd", "amount":1000}`)
	if replay.status != 201 || replay.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %d %v %s", replay.status, replay.header, replay.body)
	}
	if n := len(fake.Charges()); n != 1 {
		t.Fatalf("provider has %d charges, want 1", n)
	}
	if got := call(t, http.MethodGet, s.api+"/v1/payments/"+p.ID, "key_a", "", ""); got.status != 200 {
		t.Fatalf("GET: %d %s", got.status, got.body)
	}

	// The admin port has metrics by route pattern, pool stats, and pprof.
	metrics := callAdmin(t, s.admin+"/metrics")
	for _, want := range []string{
		`payservice_http_requests_total{code="201",method="POST",route="/v1/payments"} 2`,
		`payservice_http_request_duration_seconds_bucket{code="200",method="GET",route="/v1/payments/{id}"`,
		`go_sql_max_open_connections{db_name="primary"} 20`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !bytes.Contains(metrics.body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if r := callAdmin(t, s.admin+"/debug/pprof/"); r.status != 200 {
		t.Errorf("pprof: %d", r.status)
	}
	if r := call(t, http.MethodGet, s.api+"/metrics", "", "", ""); r.status != 404 {
		t.Errorf("/metrics on the public port: %d, want 404", r.status)
	}
	// Readiness on the admin port also says which server takes writes; the
	// public one never names an address.
	var detailed struct{ Details map[string]string }
	if r := callAdmin(t, s.admin+"/health/ready"); r.status != 200 || json.Unmarshal(r.body, &detailed) != nil ||
		!strings.HasPrefix(detailed.Details["postgres"], "writes on ") {
		t.Errorf("admin readiness: %d %s; want 200 with details.postgres naming the writer", r.status, r.body)
	}
	if r := call(t, http.MethodGet, s.api+"/health/ready", "", "", ""); bytes.Contains(r.body, []byte("details")) {
		t.Errorf("public readiness shows details: %s", r.body)
	}

	// The healthcheck subcommand agrees.
	hc := map[string]string{"HTTP_ADDR": strings.TrimPrefix(s.api, "http://")}
	if err := run(context.Background(), []string{"healthcheck"}, func(k string) string { return hc[k] }, io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of a ready server: %v", err)
	}

	// Cancelling the context stops it cleanly.
	s.stop()
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("run returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop within 10s")
	}
	s.done <- nil // for the cleanup
	s.logs.WaitFor(t, "stopped", func(l map[string]any) bool { return l["msg"] == "stopped" })
	if err := run(context.Background(), []string{"healthcheck"}, func(k string) string { return hc[k] }, io.Discard, io.Discard); err == nil {
		t.Error("healthcheck of a stopped server succeeded")
	}
}

// waitReady polls /health/ready until it answers 200.
func waitReady(t *testing.T, base string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if status, _ := readiness(t, base); status == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready within 30s")
		}
	}
}

// metricLine returns the /metrics line starting with prefix, or "".
func metricLine(t *testing.T, admin, prefix string) string {
	t.Helper()
	for _, line := range strings.Split(string(callAdmin(t, admin+"/metrics").body), "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

func TestRun_BreakerOpensOnProviderFaultsAndClosesAfter(t *testing.T) {
	// Every request that reaches the provider is counted: the fake's
	// ledger cannot tell, as a 503 fault records no charge.
	fake := fakeprovider.New()
	var requests atomic.Int64
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(provider.Close)
	st := newStack(t, map[string]string{
		"PROVIDER_URL":                      provider.URL,
		"PROVIDER_BREAKER_MIN_REQUESTS":     "4",
		"PROVIDER_BREAKER_OPEN_TIMEOUT":     "1s",
		"PROVIDER_BREAKER_HALF_OPEN_PROBES": "1",
		"PROVIDER_RETRY_MAX_RETRY_AFTER":    "0s", // the fake's Retry-After: 1 ends each call at once
	})
	st.fake = fake // faults go to the fake behind the counter
	s := st.start(t)
	payKey := func(key string) response { return pay(t, s, "key_a", key, body1000) }
	const state = `payservice_breaker_state{name="provider"} `

	st.faults(t, fakeprovider.Faults{ErrorRate: 1})
	// The provider answers 503 to everything: payments end processing
	// (202: 5xx is an unknown outcome) until the breaker trips.
	before := requests.Load()
	opened := false
	for i := range 10 {
		r := payKey(fmt.Sprint("fault-", i))
		if r.status == 503 {
			opened = true
			break
		}
		if r.status != 202 {
			t.Fatalf("payment %d during the outage: %d %s, want 202 until the breaker opens", i, r.status, r.body)
		}
	}
	if !opened {
		t.Fatal("the breaker did not open within 10 failing payments")
	}
	// The counter sees the outage's calls, so its silence below means
	// something.
	if n := requests.Load() - before; n < 4 {
		t.Fatalf("%d requests reached the provider before the breaker opened, want at least PROVIDER_BREAKER_MIN_REQUESTS (4)", n)
	}
	if got := metricLine(t, s.admin, state); got != state+"2" {
		t.Errorf("metric %q, want %q", got, state+"2")
	}
	before = requests.Load()
	for i := range 5 {
		start := time.Now()
		r := payKey(fmt.Sprint("open-", i))
		took := time.Since(start)
		if r.status != 503 || r.header.Get("Retry-After") == "" {
			t.Fatalf("while open: %d (Retry-After %q), want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
		}
		if took > 200*time.Millisecond {
			t.Errorf("a 503 from the open breaker took %s, want milliseconds", took)
		}
	}
	if n := requests.Load() - before; n != 0 {
		t.Errorf("%d requests reached the provider while the breaker was open, want 0", n)
	}

	// Faults cleared: after the open timeout a probe succeeds and closes it.
	fake.ResetFaults()
	time.Sleep(1100 * time.Millisecond) // PROVIDER_BREAKER_OPEN_TIMEOUT, and a margin
	if r := payKey("after"); r.status != 201 {
		t.Fatalf("after recovery: %d %s, want 201", r.status, r.body)
	}
	if got := metricLine(t, s.admin, state); got != state+"0" {
		t.Errorf("metric %q, want %q", got, state+"0")
	}
	// A key refused with 503 stays usable: nothing was stored for it.
	if r := payKey("open-0"); r.status != 201 {
		t.Errorf("retrying a key refused while open: %d, want 201", r.status)
	}
}

func TestRun_ConcurrentMigrateCommands(t *testing.T) {
	dbURL := testenv.NewEmptyDatabase(t)
	env := func(k string) string { return map[string]string{"DATABASE_URL": dbURL}[k] }
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- run(context.Background(), []string{"migrate"}, env, io.Discard, io.Discard) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	pool, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var applied, distinct int
	if err := pool.QueryRow(`SELECT count(*), count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0`).Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	if applied == 0 || applied != distinct {
		t.Errorf("goose_db_version: %d rows for %d versions, want each version once", applied, distinct)
	}
	var table string
	if err := pool.QueryRow(`SELECT to_regclass('payments')::text`).Scan(&table); err != nil || table != "payments" {
		t.Errorf("payments table: %q, %v", table, err)
	}
}

func TestRun_ConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no database url", nil, map[string]string{"API_KEYS": "a:b"}, "DATABASE_URL is required"},
		{"migrate needs a database url", []string{"migrate"}, nil, "DATABASE_URL is required"},
		{"bad duration", nil, map[string]string{"API_KEYS": "a:b", "DATABASE_URL": "postgres://x@y/z", "SHUTDOWN_TIMEOUT": "later"}, "SHUTDOWN_TIMEOUT=later"},
		{"unknown command", []string{"fly"}, nil, `unknown command "fly"`},
		{"stray argument", []string{"serve", "now"}, nil, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, func(k string) string { return tt.env[k] }, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run = %v, want an error containing %q", err, tt.want)
			}
			if strings.Count(err.Error(), "\n") != 0 {
				t.Errorf("want one line, got:\n%s", err)
			}
		})
	}
}

func TestRun_HelpListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	sc := bufio.NewScanner(strings.NewReader(help))
	vars := 0
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && strings.ToUpper(f[0]) == f[0] && strings.Contains(f[0], "_") {
			vars++
		}
	}
	for _, name := range []string{"HTTP_ADDR", "ADMIN_ADDR", "DATABASE_URL", "DATABASE_REPLICA_URL", "REDIS_URL", "PROVIDER_URL", "API_KEYS", "SHUTDOWN_DRAIN_DELAY", "SHUTDOWN_TIMEOUT", "LOG_LEVEL"} {
		if !strings.Contains(help, name) {
			t.Errorf("-h lacks %s", name)
		}
	}
	if vars < 10 {
		t.Errorf("-h lists %d variables:\n%s", vars, help)
	}
}
