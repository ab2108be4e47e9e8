// Command loadgen sends payments to payservice at a steady rate, from
// inside a cluster, and reports what became of every one. The Kubernetes
// end-to-end suite (its parent directory) runs it as a pod, so that its
// requests reach payservice through the Service and kube-proxy, as real
// clients' do, and drives it over a port-forward:
//
//	POST /start?rate=N   send N new payments a second until stopped
//	GET  /progress       counts so far
//	POST /stop           stop sending, wait for the payments in flight, report
//
// It behaves as a careful client: each payment has its own Idempotency-Key
// and is retried with it (honouring Retry-After) after a network error, a
// 5xx, a 429 or a 409 in-flight answer, until it is acknowledged or its
// budget runs out. The report counts both: failed attempts, which a
// rollout should never cause, and payments never acknowledged, which
// nothing should.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// budget bounds one payment, its retries included: longer than a
// rollout's worst gap (a pod's whole grace period), so a careful client
// would not have given up.
const budget = 60 * time.Second

func main() {
	target := os.Getenv("TARGET") // e.g. http://payservice
	apiKey := os.Getenv("API_KEY")
	if target == "" || apiKey == "" {
		log.Fatal("loadgen: TARGET and API_KEY must be set")
	}
	g := &generator{target: strings.TrimSuffix(target, "/"), apiKey: apiKey, client: &http.Client{
		Timeout:   15 * time.Second, // above the API's REQUEST_TIMEOUT: its answer, not ours, ends a slow request
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /start", g.start)
	mux.HandleFunc("GET /progress", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, g.progress()) })
	mux.HandleFunc("POST /stop", g.stop)
	log.Fatal(http.ListenAndServe(":8080", mux))
}

// Report is what POST /stop answers.
type Report struct {
	Payments       int            `json:"payments"`        // started
	Acknowledged   map[string]Ack `json:"acknowledged"`    // by Idempotency-Key
	Attempts       int            `json:"attempts"`        // requests sent
	FailedAttempts int            `json:"failed_attempts"` // network errors and statuses that are not 2xx
	Failures       []string       `json:"failures"`        // the first of them, described
	GivenUp        int            `json:"given_up"`        // payments never acknowledged
	LatencyP50MS   float64        `json:"latency_p50_ms"`  // of acknowledged payments, retries included
	LatencyP99MS   float64        `json:"latency_p99_ms"`
}

// Ack is an acknowledged payment: the API answered 201 (or 200, a replay).
type Ack struct {
	ID     string `json:"id"`
	Amount int64  `json:"amount"`
}

type generator struct {
	target, apiKey string
	client         *http.Client

	mu        sync.Mutex
	cancel    context.CancelFunc // stops the sending loop; nil when idle
	running   sync.WaitGroup     // the loop and every payment it started
	report    Report
	latencies []time.Duration
}

func (g *generator) start(w http.ResponseWriter, r *http.Request) {
	rate, err := strconv.Atoi(r.URL.Query().Get("rate"))
	if err != nil || rate < 1 || rate > 1000 {
		http.Error(w, "rate: want a whole number of payments a second, 1 to 1000", http.StatusBadRequest)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cancel != nil {
		http.Error(w, "already running", http.StatusConflict)
		return
	}
	g.report = Report{Acknowledged: map[string]Ack{}}
	g.latencies = nil
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.running.Go(func() { g.send(ctx, rate) })
	w.WriteHeader(http.StatusAccepted)
}

// send starts rate payments a second until ctx ends. Open model: a slow
// answer does not slow the arrivals, as with real clients.
func (g *generator) send(ctx context.Context, rate int) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			g.running.Go(g.pay)
		}
	}
}

func (g *generator) stop(w http.ResponseWriter, _ *http.Request) {
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel == nil {
		http.Error(w, "not running", http.StatusConflict)
		return
	}
	cancel()
	g.running.Wait() // the payments in flight finish, within their budget
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cancel = nil
	slices.Sort(g.latencies)
	g.report.LatencyP50MS = quantileMS(g.latencies, 0.50)
	g.report.LatencyP99MS = quantileMS(g.latencies, 0.99)
	writeJSON(w, g.report)
}

func (g *generator) progress() Report {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.report
	p.Acknowledged = nil // counts only
	p.Failures = nil
	return p
}

// pay makes one payment, retrying with its key until it is acknowledged or
// its budget runs out.
func (g *generator) pay() {
	key, amount := newKey(), randomAmount()
	body := fmt.Sprintf(`{"amount":%d,"currency":"usd"}`, amount)
	g.mu.Lock()
	g.report.Payments++
	g.mu.Unlock()

	began := time.Now()
	deadline := began.Add(budget)
	for attempt := 1; ; attempt++ {
		id, retryAfter, failure := g.attempt(key, body)
		g.mu.Lock()
		g.report.Attempts++
		if failure == "" {
			g.report.Acknowledged[key] = Ack{ID: id, Amount: amount}
			g.latencies = append(g.latencies, time.Since(began))
			g.mu.Unlock()
			return
		}
		g.report.FailedAttempts++
		if len(g.report.Failures) < 20 {
			g.report.Failures = append(g.report.Failures,
				fmt.Sprintf("%s: key %s attempt %d: %s", time.Now().UTC().Format("15:04:05.000"), key, attempt, failure))
		}
		retry := retryAfter >= 0 && time.Now().Add(retryAfter).Before(deadline)
		if !retry {
			g.report.GivenUp++
		}
		g.mu.Unlock()
		if !retry {
			return
		}
		time.Sleep(retryAfter)
	}
}

// attempt sends the payment once. It returns the payment's id, or a
// failure and how long to wait before retrying (negative: do not).
func (g *generator) attempt(key, body string) (id string, retryAfter time.Duration, failure string) {
	req, err := http.NewRequest(http.MethodPost, g.target+"/v1/payments", strings.NewReader(body))
	if err != nil {
		return "", -1, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+g.apiKey)
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return "", 250 * time.Millisecond, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK:
		var p struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(b, &p); err != nil || p.ID == "" {
			return "", -1, fmt.Sprintf("status %d without a payment id: %.200s", resp.StatusCode, b)
		}
		return p.ID, 0, ""
	case resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		wait := 250 * time.Millisecond
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		}
		return "", wait, fmt.Sprintf("status %d: %.200s", resp.StatusCode, b)
	default: // the request itself is wrong: retrying cannot help
		return "", -1, fmt.Sprintf("status %d: %.200s", resp.StatusCode, b)
	}
}

// randomAmount avoids amounts the fake provider declines (…402 cents).
func randomAmount() int64 {
	n, err := rand.Int(rand.Reader, big.NewInt(99_000))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	a := n.Int64() + 100
	if a%1000 == 402 {
		a++
	}
	return a
}

func newKey() string { return "e2e-" + rand.Text() }

func quantileMS(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))]) / float64(time.Millisecond)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Print(errors.Join(errors.New("loadgen: write answer"), err))
	}
}
