package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/paymentsaudit"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

var soakRequests = flag.Int("soak.requests", 1000, "HTTP requests the soak test sends (the README's run uses 10000)")

// TestSoak_ChargesAtMostOnceUnderChaos is the soak tool: clients with
// random retries and concurrent duplicates pay through two server
// instances, in two phases:
//
//   - chaos: the provider fails 30% of charges outright and 10% after
//     charging, and Redis is flushed once and restarted once;
//   - slow lookups (a fifth more requests): the provider's charge lookups
//     take 400ms, 30% of charges fail after charging and 10% outright, and
//     clients come back to an unknown outcome only after 1.6–2.5s, when
//     short leases have expired and the reconciler is looking the same
//     payments up: retries and reconciler race for them.
//
// At the end it checks the promise of the whole template:
//
//   - provider charges = succeeded payments, charge for charge;
//   - no client's key was charged twice, and no charge lacks its payment;
//   - every 2xx answer's payment exists in Postgres, with its amount;
//   - no payment is left processing once the reconciler has run.
//
// Run it long with:
//
//	go test ./cmd/server -run Soak -v -soak.requests=10000
func TestSoak_ChargesAtMostOnceUnderChaos(t *testing.T) {
	redisC := testenv.NewRedis(t)
	// The fake provider, behind a switch that slows its charge lookups.
	fake := fakeprovider.New()
	var slowLookups atomic.Bool
	providerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/v1/charges" && slowLookups.Load() {
			time.Sleep(400 * time.Millisecond) // a slow provider, not a wait for a race
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(providerSrv.Close)
	st := newStack(t, map[string]string{
		"PROVIDER_URL":                   providerSrv.URL,
		"REDIS_URL":                      redisC.URL(),
		"PROVIDER_RETRY_MAX_RETRY_AFTER": "0s", // the fake's Retry-After: 1 ends server-side retries; clients retry
		// Short leases and a quick reconciler, with the request timeout
		// they must outlast.
		"REQUEST_TIMEOUT":    "1s",
		"PROVIDER_TIMEOUT":   "500ms",
		"SETTLE_TIMEOUT":     "250ms",
		"IDEMPOTENCY_LEASE":  "1500ms",
		"RECONCILE_INTERVAL": "200ms",
		"RECONCILE_AFTER":    "1500ms",
		"RECONCILE_GRACE":    "2s",
		// 40% of charges fail, so the breaker trips now and then. The
		// clients stop at the end, and with the default 30s open period a
		// breaker tripped in the last seconds would hold the reconciler
		// back longer than the wait below: shorten it.
		"PROVIDER_BREAKER_OPEN_TIMEOUT": "1s",
	})
	st.fake = fake
	servers := []*instance{st.start(t), st.start(t)}
	st.faults(t, fakeprovider.Faults{ErrorRate: 0.3, ChargeThenErrorRate: 0.1, LatencyMS: 2})

	var (
		sent      atomic.Int64
		statusMu  sync.Mutex
		statuses  = map[string]int{}
		answers   sync.Map // payment id → amount, from every 2xx answer
		logical   atomic.Int64
		unsettled atomic.Int64 // logical payments given up before a final answer
	)
	count := func(s string) {
		statusMu.Lock()
		statuses[s]++
		statusMu.Unlock()
	}
	var refundAnswers sync.Map // refund id → amount, from every 2xx answer
	client := apiClient(t)
	sendRefund := func(rng *rand.Rand, paymentID, key string, amount int64) (int, bool) {
		sent.Add(1)
		srv := servers[rng.IntN(len(servers))]
		req, _ := http.NewRequest(http.MethodPost, srv.api+"/v1/payments/"+paymentID+"/refunds", strings.NewReader(fmt.Sprintf(`{"amount":%d}`, amount)))
		req.Header.Set("Authorization", "Bearer key_a")
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			count("refund network error")
			return 0, false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		count(fmt.Sprint("refund ", resp.StatusCode))
		if resp.StatusCode/100 == 2 {
			var r struct {
				ID     string `json:"id"`
				Amount int64  `json:"amount"`
			}
			if err := json.Unmarshal(body, &r); err != nil || r.ID == "" {
				t.Errorf("2xx without a refund: %s", body)
			}
			refundAnswers.Store(r.ID, r.Amount)
		}
		// Refunded, refused by the provider or as too large: the client
		// has its answer.
		return resp.StatusCode, resp.StatusCode == 201 || resp.StatusCode == 422
	}
	send := func(rng *rand.Rand, key string, amount int64) (int, bool, string) {
		sent.Add(1)
		srv := servers[rng.IntN(len(servers))]
		req, _ := http.NewRequest(http.MethodPost, srv.api+"/v1/payments", strings.NewReader(fmt.Sprintf(`{"amount":%d,"currency":"usd"}`, amount)))
		req.Header.Set("Authorization", "Bearer key_a")
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			count("network error")
			return 0, false, ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		count(fmt.Sprint(resp.StatusCode))
		var p struct {
			ID     string `json:"id"`
			Amount int64  `json:"amount"`
		}
		if resp.StatusCode/100 == 2 {
			if err := json.Unmarshal(body, &p); err != nil || p.ID == "" {
				t.Errorf("2xx without a payment: %s", body)
			}
			if prev, loaded := answers.LoadOrStore(p.ID, p.Amount); loaded && prev.(int64) != p.Amount {
				t.Errorf("payment %s answered with amounts %d and %d", p.ID, prev, p.Amount)
			}
		}
		return resp.StatusCode, resp.StatusCode == 201 || resp.StatusCode == 402, p.ID
	}

	// retry sends a request with 0–2 concurrent duplicates, then retries
	// it with jitter until a final answer (or 30 tries). A late client
	// comes back to an unknown outcome (202) only after 1.6–2.5s.
	retry := func(rng *rand.Rand, late bool, try func(rng *rand.Rand) (status int, final bool)) bool {
		var dups sync.WaitGroup
		for range rng.IntN(3) {
			seed := rng.Uint64()
			dups.Go(func() { try(rand.New(rand.NewPCG(seed, 1))) })
		}
		final, status := false, 0
		for n := 0; n < 30 && !final; n++ {
			switch {
			case n > 0 && late && status == http.StatusAccepted:
				time.Sleep(time.Duration(1600+rng.IntN(900)) * time.Millisecond)
			case n > 0:
				time.Sleep(time.Duration(5+rng.IntN(40)) * time.Millisecond)
			}
			status, final = try(rng)
		}
		dups.Wait()
		return final
	}

	// One logical payment, and for a third of those charged, one or two
	// refunds (their amounts sometimes more than what is left).
	payOnce := func(rng *rand.Rand, phase string, worker, n int, late bool) {
		key := fmt.Sprintf("soak-%s-%d-%d", phase, worker, n)
		amount := int64(100 + rng.IntN(99_000))
		if rng.IntN(10) == 0 {
			amount = amount/1000*1000 + 402 // a decline
		}
		var (
			mu        sync.Mutex // the duplicates send too
			paymentID string
			charged   bool
		)
		final := retry(rng, late, func(rng *rand.Rand) (int, bool) {
			status, final, id := send(rng, key, amount)
			if status == http.StatusCreated {
				mu.Lock()
				charged, paymentID = true, id
				mu.Unlock()
			}
			return status, final
		})
		if !final {
			unsettled.Add(1)
		}
		if !charged || rng.IntN(3) != 0 {
			return
		}
		for r := range 1 + rng.IntN(2) {
			refund := 1 + rng.Int64N(amount*2/3)
			refundKey := fmt.Sprintf("%s-refund-%d", key, r)
			retry(rng, late, func(rng *rand.Rand) (int, bool) { return sendRefund(rng, paymentID, refundKey, refund) })
		}
	}

	// Chaos: a flush at a third of the requests, a restart at two thirds.
	total := int64(*soakRequests)
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		for sent.Load() < total/3 {
			time.Sleep(5 * time.Millisecond)
		}
		flushRedis(t, redisC.URL())
		t.Logf("chaos: FLUSHALL after %d requests", sent.Load())
		for sent.Load() < 2*total/3 {
			time.Sleep(5 * time.Millisecond)
		}
		t.Logf("chaos: Redis stopped after %d requests", sent.Load())
		if err := redisC.Stop(context.Background()); err != nil {
			t.Errorf("stop redis: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := redisC.Start(context.Background()); err != nil {
			t.Errorf("start redis: %v", err)
		}
		t.Logf("chaos: Redis started again after %d requests", sent.Load())
	}()

	phase := func(name string, until int64, late bool) {
		var workers sync.WaitGroup
		for w := range 16 {
			workers.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), uint64(len(name))))
				for n := 0; sent.Load() < until; n++ {
					logical.Add(1)
					payOnce(rng, name, w, n, late)
				}
			})
		}
		workers.Wait()
	}
	start := time.Now()
	phase("chaos", total, false)
	<-chaosDone
	t.Logf("phase slow-lookups: from %d requests", sent.Load())
	slowLookups.Store(true)
	st.faults(t, fakeprovider.Faults{ErrorRate: 0.1, ChargeThenErrorRate: 0.3, LatencyMS: 2})
	phase("slowlookups", total+total/5, true)
	elapsed := time.Since(start)

	// Faults off: the reconciler settles what the clients left processing.
	st.fake.ResetFaults()
	slowLookups.Store(false)
	pool, err := sql.Open("postgres", st.env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reconcileStart := time.Now()
	settle, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	left, err := paymentsaudit.WaitSettled(settle, pool)
	cancel()
	if err != nil || left != 0 {
		// The CI log is the only record: say what the reconcilers saw.
		for i, srv := range servers {
			t.Logf("server %d metrics:\n%s", i, metricLines(t, srv, "payservice_breaker_state", "payservice_reconciler_"))
		}
		t.Fatalf("timed out waiting for the reconciler to settle every payment and refund: %d still processing (%v)", left, err)
	}
	reconciled := time.Since(reconcileStart).Round(time.Millisecond)

	// The ledger against the database and the answers given.
	f, err := paymentsaudit.Audit(context.Background(), pool, st.fake.Charges(), st.fake.Refunds(),
		paymentsaudit.Acknowledged{Payments: amounts(&answers), Refunds: amounts(&refundAnswers)})
	if err != nil {
		t.Fatal(err)
	}
	for _, problem := range f.Problems() {
		t.Error(problem)
	}

	var keys []string
	for k := range statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var hist []string
	for _, k := range keys {
		hist = append(hist, fmt.Sprintf("%s=%d", k, statuses[k]))
	}
	t.Logf("soak: %d requests for %d logical payments in %s (%d given up by their client before a final answer)",
		sent.Load(), logical.Load(), elapsed.Round(time.Millisecond), unsettled.Load())
	t.Logf("soak: answers %s", strings.Join(hist, " "))
	t.Logf("soak: payments %d (succeeded %d, failed %d); provider charges succeeded %d",
		f.Payments, f.Succeeded, f.Failed, f.Charges)
	t.Logf("soak: refunds %d (succeeded %d); provider refunds %d", f.Refunds, f.RefundsSucceeded, f.ProviderRefunds)
	for i, srv := range servers {
		t.Logf("soak: server %d reconciler: %s", i, strings.ReplaceAll(metricLines(t, srv, "payservice_reconciler_"), "\n", "  "))
	}
	t.Logf("soak: invariants: charges=succeeded %v; keys charged twice %d; refunds=succeeded refunds %v; refunds wrong for their payment %d; 2xx answers missing from Postgres %d; processing after reconciliation 0 (after %s)",
		f.Charges == f.Succeeded, len(f.ChargedTwice), f.ProviderRefunds == f.RefundsSucceeded, len(f.OverRefunded), len(f.Missing), reconciled)
}

// amounts copies a map of ids to amounts built by concurrent clients.
func amounts(m *sync.Map) map[string]int64 {
	out := map[string]int64{}
	m.Range(func(id, amount any) bool {
		out[id.(string)] = amount.(int64)
		return true
	})
	return out
}

// metricLines returns the server's metric lines that start with any of the
// prefixes.
func metricLines(t *testing.T, srv *instance, prefixes ...string) string {
	t.Helper()
	resp, err := http.Get(srv.admin + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out []string
	for line := range strings.Lines(string(body)) {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, strings.TrimSpace(line))
			}
		}
	}
	return strings.Join(out, "\n")
}
