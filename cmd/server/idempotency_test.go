package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// stack is one or more servers sharing a database, a Redis and a fake
// provider.
type stack struct {
	fake     *fakeprovider.Provider
	env      map[string]string
	redisURL string
}

func newStack(t *testing.T, overrides map[string]string) *stack {
	t.Helper()
	fake, providerURL := fakeprovider.Start(t)
	s := &stack{fake: fake, redisURL: testenv.RedisURL(t)}
	s.env = map[string]string{
		"DATABASE_URL":         testenv.NewDatabase(t),
		"REDIS_URL":            s.redisURL,
		"PROVIDER_URL":         providerURL,
		"API_KEYS":             "client_a:key_a,client_b:key_b",
		"SHUTDOWN_DRAIN_DELAY": "0s",
		"RATE_LIMIT_BURST":     "10000", // the tests send bursts; limits are tested elsewhere
	}
	for k, v := range overrides {
		s.env[k] = v
	}
	return s
}

// start runs one more server of the stack and waits until it is ready.
func (s *stack) start(t *testing.T) *instance {
	t.Helper()
	srv := startRun(t, s.env)
	waitReady(t, srv.api)
	return srv
}

func (s *stack) faults(t *testing.T, f fakeprovider.Faults) {
	t.Helper()
	if err := s.fake.SetFaults(f); err != nil {
		t.Fatal(err)
	}
}

func pay(t *testing.T, srv *instance, apiKey, idemKey, body string) response {
	t.Helper()
	return call(t, http.MethodPost, srv.api+"/v1/payments", apiKey, idemKey, body)
}

type paymentBody struct {
	ID               string `json:"id"`
	Status           string `json:"status"`
	ProviderChargeID string `json:"provider_charge_id"`
}

// decodePayment reads the payment of a 201/202 body, or of a 402 problem.
func decodePayment(t *testing.T, r response) paymentBody {
	t.Helper()
	var problem struct {
		Payment *paymentBody `json:"payment"`
	}
	if err := json.Unmarshal(r.body, &problem); err == nil && problem.Payment != nil {
		return *problem.Payment
	}
	var p paymentBody
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("payment body %s: %v", r.body, err)
	}
	return p
}

const body1000 = `{"amount":1000,"currency":"usd"}`

func TestIdempotency_Contract(t *testing.T) {
	st := newStack(t, nil)
	srv := st.start(t)

	t.Run("a completed request is replayed byte for byte", func(t *testing.T) {
		first := pay(t, srv, "key_a", "c-1", body1000)
		again := pay(t, srv, "key_a", "c-1", `{ "currency": "usd", "amount": 1000 }`)
		if first.status != 201 || again.status != 201 || string(first.body) != string(again.body) {
			t.Fatalf("first %d %s\nagain %d %s", first.status, first.body, again.status, again.body)
		}
		if again.header.Get("Idempotent-Replayed") != "true" || first.header.Get("Idempotent-Replayed") != "" {
			t.Errorf("Idempotent-Replayed: first %q, replay %q", first.header.Get("Idempotent-Replayed"), again.header.Get("Idempotent-Replayed"))
		}
		if first.header.Get("X-Request-Id") == again.header.Get("X-Request-Id") {
			t.Error("the replay reuses the first exchange's X-Request-Id header")
		}
	})

	t.Run("a decline is replayed as the identical 402", func(t *testing.T) {
		first := pay(t, srv, "key_a", "c-2", `{"amount":1402,"currency":"usd"}`)
		again := pay(t, srv, "key_a", "c-2", `{"amount":1402,"currency":"usd"}`)
		if first.status != 402 || again.status != 402 || string(first.body) != string(again.body) || again.header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("first %d %s\nagain %d %s", first.status, first.body, again.status, again.body)
		}
		if p := decodePayment(t, first); p.Status != "failed" {
			t.Errorf("402 payment status %q, want failed", p.Status)
		}
	})

	t.Run("the key reused for another request is 422", func(t *testing.T) {
		pay(t, srv, "key_a", "c-3", body1000)
		r := pay(t, srv, "key_a", "c-3", `{"amount":999,"currency":"usd"}`)
		var prob struct{ Type string }
		if err := json.Unmarshal(r.body, &prob); err != nil {
			t.Fatalf("%d %s: %v", r.status, r.body, err)
		}
		if r.status != 422 || !strings.HasSuffix(prob.Type, "/idempotency-key-reused") {
			t.Fatalf("%d %s, want 422 idempotency-key-reused", r.status, r.body)
		}
	})

	t.Run("a bad request with a used key is refused as bad, not as a reuse", func(t *testing.T) {
		pay(t, srv, "key_a", "c-4", body1000)
		for _, bad := range []struct{ body, wantType string }{
			{`{"amout":1000,"currency":"usd"}`, "/malformed-request"},
			{`{"amount":0,"currency":"usd"}`, "/invalid-request"},
		} {
			r := pay(t, srv, "key_a", "c-4", bad.body)
			var prob struct{ Type string }
			if err := json.Unmarshal(r.body, &prob); err != nil {
				t.Fatalf("%d %s: %v", r.status, r.body, err)
			}
			if !strings.HasSuffix(prob.Type, bad.wantType) {
				t.Errorf("%s with a completed key: %d %s, want %s as without Redis", bad.body, r.status, r.body, bad.wantType)
			}
		}
	})

	t.Run("clients have their own keys and payments", func(t *testing.T) {
		a := decodePayment(t, pay(t, srv, "key_a", "shared", body1000))
		b := decodePayment(t, pay(t, srv, "key_b", "shared", body1000))
		if a.ID == b.ID || a.ProviderChargeID == b.ProviderChargeID {
			t.Fatalf("two clients, one key: payments %s and %s", a.ID, b.ID)
		}
		if r := call(t, http.MethodGet, srv.api+"/v1/payments/"+a.ID, "key_b", "", ""); r.status != 404 {
			t.Errorf("client_b reading client_a's payment: %d, want 404", r.status)
		}
	})

	t.Run("rejected requests are not stored: the key stays usable", func(t *testing.T) {
		for _, bad := range []struct {
			name, apiKey, body string
			want               int
		}{
			{"invalid amount", "key_a", `{"amount":0,"currency":"usd"}`, 422},
			{"malformed", "key_a", `{"amount":`, 400},
			{"unauthenticated", "nope", body1000, 401},
		} {
			if r := pay(t, srv, bad.apiKey, "c-5", bad.body); r.status != bad.want {
				t.Fatalf("%s: %d, want %d", bad.name, r.status, bad.want)
			}
		}
		if r := pay(t, srv, "key_a", "c-5", body1000); r.status != 201 || r.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("the key after rejections: %d %v, want a fresh 201", r.status, r.header)
		}
	})
}

// concurrently sends the same payment n times while the first to reach
// the provider is held there: every other request meets it in flight. It
// returns the answers, the held one's last.
func concurrently(t *testing.T, spy *providerSpy, n int, send func(i int) response) []response {
	t.Helper()
	held := spy.holdNext()
	answers := make(chan response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { answers <- send(i) })
	}
	<-held
	var results []response
	for range n - 1 { // all but the held one answer while it is held
		results = append(results, <-answers)
	}
	spy.release()
	wg.Wait()
	return append(results, <-answers)
}

// drivenOnce checks that every charge request carried one provider key, and
// that each key was sent once: one server drove the payment, one time.
func drivenOnce(t *testing.T, spy *providerSpy, payments int) {
	t.Helper()
	requests := spy.chargeRequests()
	if len(requests) != payments {
		t.Errorf("charge requests for %d payments, want %d: %v", len(requests), payments, requests)
	}
	for key, n := range requests {
		if n != 1 {
			t.Errorf("payment %s was sent to the provider %d times, want once", key, n)
		}
	}
}

func TestIdempotency_FiftyConcurrentIdenticalRequestsChargeOnce(t *testing.T) {
	st, spy := newSpiedStack(t, nil)
	srv := st.start(t)
	results := concurrently(t, spy, 50, func(int) response { return pay(t, srv, "key_a", "dup", body1000) })
	counts := map[int]int{}
	for _, r := range results[:len(results)-1] {
		counts[r.status]++
	}
	if counts[409] != 49 {
		t.Errorf("answers while the first was in flight: %v, want 49 × 409", counts)
	}
	if first := results[len(results)-1]; first.status != 201 || first.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the first: %d %v, want a fresh 201", first.status, first.header)
	}
	drivenOnce(t, spy, 1)
	if charges := st.fake.Charges(); len(charges) != 1 {
		t.Errorf("%d provider charges, want 1", len(charges))
	}
}

func TestIdempotency_OtherRequestWithTheKeyIs409InFlightAnd422After(t *testing.T) {
	st, spy := newSpiedStack(t, nil)
	srv := st.start(t)
	held := spy.holdNext()
	first := make(chan response)
	go func() { first <- pay(t, srv, "key_a", "k", body1000) }()
	<-held

	if r := pay(t, srv, "key_a", "k", `{"amount":5,"currency":"usd"}`); r.status != 409 || r.header.Get("Retry-After") == "" {
		t.Errorf("while in flight: %d (Retry-After %q), want 409 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	spy.release()
	if r := <-first; r.status != 201 {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	if r := pay(t, srv, "key_a", "k", `{"amount":5,"currency":"usd"}`); r.status != 422 {
		t.Errorf("after completion: %d, want 422", r.status)
	}
}

func TestIdempotency_RedisFlushedBetweenRequestAndRetry(t *testing.T) {
	st := newStack(t, nil)
	srv := st.start(t)
	first := pay(t, srv, "key_a", "k", body1000)
	flushRedis(t, st.redisURL)
	again := pay(t, srv, "key_a", "k", body1000)
	if again.status != 201 || again.header.Get("Idempotent-Replayed") != "true" || string(again.body) != string(first.body) {
		t.Fatalf("after FLUSHALL: %d %v %s\nwant the first answer replayed: %s", again.status, again.header, again.body, first.body)
	}
	if n := len(st.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

func flushRedis(t *testing.T, url string) {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestIdempotency_RedisStoppedServesThroughPostgres(t *testing.T) {
	r := testenv.NewRedis(t)
	st, spy := newSpiedStack(t, map[string]string{"REDIS_URL": r.URL()})
	srv := st.start(t)
	before := pay(t, srv, "key_a", "before", body1000)

	if err := r.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Readiness reuses its checks' results for a second: wait for a fresh
	// round, which must find Redis degraded and the replica still ready.
	var status int
	var checks map[string]string
	waitFor(t, "readiness to see Redis down", func() bool {
		status, checks = readiness(t, srv.api)
		return checks["redis"] != "ok"
	})
	if status != 200 || !strings.HasPrefix(checks["redis"], "degraded") {
		t.Fatalf("ready with Redis down: %d %v; want 200 with redis degraded", status, checks)
	}
	if again := pay(t, srv, "key_a", "before", body1000); again.status != 201 || string(again.body) != string(before.body) {
		t.Errorf("replay with Redis down: %d %s", again.status, again.body)
	}
	// Duplicates race with no Redis lock at all: Postgres alone decides.
	results := concurrently(t, spy, 10, func(int) response { return pay(t, srv, "key_a", "during", body1000) })
	for _, r := range results[:len(results)-1] {
		if r.status != 409 {
			t.Errorf("with Redis down, while the first is in flight: %d %s, want 409", r.status, r.body)
		}
	}
	if first := results[len(results)-1]; first.status != 201 {
		t.Errorf("with Redis down, the first: %d %s", first.status, first.body)
	}
	drivenOnce(t, spy, 2) // "before" and "during"
	if n := len(st.fake.Charges()); n != 2 {
		t.Errorf("%d charges, want 2 (one per key)", n)
	}

	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redis ok again", func() bool { _, checks := readiness(t, srv.api); return checks["redis"] == "ok" })
}

// A request loses its lease while it is at the provider: a stalled
// process, or a clock that jumped, since the timing rules make it
// impossible otherwise. A retry takes the payment over and drives it again
// with the same provider key: one charge. The stalled request cannot settle
// what it no longer holds; it answers 201 if the retry settled first, or
// 409 (retry later) if not.
func TestIdempotency_ALeaseLostMidRequestIsTakenOverAndChargesOnce(t *testing.T) {
	st, spy := newSpiedStack(t, nil)
	srv := st.start(t)
	held := spy.holdNext()
	first := make(chan response)
	go func() { first <- pay(t, srv, "key_a", "k", body1000) }()
	<-held // charged, and the answer is held: the first request stalls

	// Both locks expire, as they would while the request stalled.
	pool, err := sql.Open("postgres", st.env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(`UPDATE idempotency_keys SET lease_expires_at = now() WHERE key = 'k'`); err != nil {
		t.Fatal(err)
	}
	flushRedis(t, st.redisURL)

	retry := pay(t, srv, "key_a", "k", body1000)
	if retry.status != 201 || retry.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("the retry: %d %v %s; want a fresh 201: it took the payment over and drove it", retry.status, retry.header, retry.body)
	}
	id := decodePayment(t, retry).ID
	if n := spy.chargeRequests()[id]; n != 2 {
		t.Errorf("payment %s was sent %d times, want 2: the first, and the retry's with the same provider key", id, n)
	}
	spy.release()
	// The stalled request cannot settle what it no longer holds; it finds
	// the payment settled and answers with the stored response.
	if r1 := <-first; r1.status != 201 || r1.header.Get("Idempotent-Replayed") != "true" || string(r1.body) != string(retry.body) {
		t.Errorf("the stalled first: %d %v %s; want the retry's 201, replayed", r1.status, r1.header, r1.body)
	}
	if n := len(st.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

func TestIdempotency_UnknownOutcomeIsSettledByRetry(t *testing.T) {
	st := newStack(t, nil)
	srv := st.start(t)
	st.faults(t, fakeprovider.Faults{ChargeThenErrorRate: 1})
	first := pay(t, srv, "key_a", "k", body1000)
	if p := decodePayment(t, first); first.status != 202 || p.Status != "processing" {
		t.Fatalf("charged, then 500: %d %s; want 202 processing", first.status, first.body)
	}
	st.fake.ResetFaults()
	retry := pay(t, srv, "key_a", "k", body1000)
	p := decodePayment(t, retry)
	charges := st.fake.Charges()
	if retry.status != 201 || p.Status != "succeeded" || len(charges) != 1 || p.ProviderChargeID != charges[0].ID {
		t.Fatalf("retry: %d %s; charges %+v; want 201 with the one charge", retry.status, retry.body, charges)
	}
}

func TestIdempotency_UnknownOutcomeIsSettledByTheReconciler(t *testing.T) {
	st := newStack(t, map[string]string{
		"RECONCILE_INTERVAL": "100ms",
		// Shortened with the request timeout, which it must outlast.
		"REQUEST_TIMEOUT":  "1s",
		"PROVIDER_TIMEOUT": "500ms",
		"SETTLE_TIMEOUT":   "250ms",
		"RECONCILE_AFTER":  "1300ms",
	})
	srv := st.start(t)
	st.faults(t, fakeprovider.Faults{ChargeThenErrorRate: 1})
	first := pay(t, srv, "key_a", "k", body1000)
	if first.status != 202 {
		t.Fatalf("charged, then 500: %d, want 202", first.status)
	}
	st.fake.ResetFaults()
	id := decodePayment(t, first).ID
	waitFor(t, "the reconciler to settle the payment", func() bool {
		r := call(t, http.MethodGet, srv.api+"/v1/payments/"+id, "key_a", "", "")
		return decodePayment(t, r).Status == "succeeded"
	})
	retry := pay(t, srv, "key_a", "k", body1000)
	if retry.status != 201 || retry.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry after reconciliation: %d %v, want a 201 replay", retry.status, retry.header)
	}
	if n := len(st.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
	if line := metricLine(t, srv.admin, `payservice_reconciler_payments_total{result="succeeded"}`); line == "" || strings.HasSuffix(line, " 0") {
		t.Errorf("reconciler metric: %q", line)
	}
}

func TestIdempotency_TwoInstancesShareTheKey(t *testing.T) {
	st, spy := newSpiedStack(t, nil)
	a, b := st.start(t), st.start(t)
	results := concurrently(t, spy, 20, func(i int) response {
		srv := a
		if i%2 == 1 {
			srv = b
		}
		return pay(t, srv, "key_a", "k", body1000)
	})
	for _, r := range results[:len(results)-1] {
		if r.status != 409 {
			t.Errorf("while the first is in flight on either instance: %d %s, want 409", r.status, r.body)
		}
	}
	if first := results[len(results)-1]; first.status != 201 {
		t.Errorf("the first: %d %s", first.status, first.body)
	}
	drivenOnce(t, spy, 1)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
