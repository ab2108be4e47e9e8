package writepath

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// phase is one kind of request the benchmark sends.
type phase int

const (
	newPayments phase = iota
	replays
	gets
)

var phases = []phase{newPayments, replays, gets}

func (p phase) String() string { return [...]string{"new", "replay", "GET"}[p] }

// paymentBody is the body of every payment request, new or replayed: an
// amount the fake provider charges (it declines those ending in 402).
const paymentBody = `{"amount":1000,"currency":"usd"}`

// target is one server under load.
type target struct {
	name   string // "bare" or "service"
	base   string // http://host:port
	auth   string // Authorization header, if any
	client *http.Client
	cpu    func() (time.Duration, bool) // the server process's CPU time so far

	// The keys and payment ids the last new-payments phase created, for
	// the replay and GET phases that follow it.
	keys, ids []string
}

func newTarget(name, addr, auth string, clients int, cpu func() (time.Duration, bool)) *target {
	return &target{name: name, base: "http://" + addr, auth: auth, cpu: cpu, client: &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: clients, MaxIdleConnsPerHost: clients,
			DisableCompression: true, IdleConnTimeout: time.Minute,
		},
	}}
}

// measurement is one phase against one target for one period.
type measurement struct {
	ok        int
	errors    map[string]int // wrong answers by kind: "HTTP 503", "no answer", ...
	sample    string         // the first wrong answer, for diagnosis
	elapsed   time.Duration  // from the first request to the last answer
	latencies []time.Duration
	cpu       time.Duration // the server process's CPU time meanwhile
	cpuOK     bool          // whether cpu could be read
}

// cpuPerAnswer is the server's CPU time per correct answer, in seconds.
func (m measurement) cpuPerAnswer() float64 {
	if !m.cpuOK || m.ok == 0 {
		return 0
	}
	return m.cpu.Seconds() / float64(m.ok)
}

func (m measurement) rate() float64 { return float64(m.ok) / m.elapsed.Seconds() }

func (m measurement) errorCount() int {
	n := 0
	for _, c := range m.errors {
		n += c
	}
	return n
}

func (m measurement) errorRatio() float64 {
	total := m.ok + m.errorCount()
	if total == 0 {
		return 1
	}
	return float64(m.errorCount()) / float64(total)
}

func (m measurement) errorSummary() string {
	if len(m.errors) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m.errors)) {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, m.errors[k]))
	}
	return strings.Join(parts, ", ") + "; first: " + m.sample
}

// percentile returns the p-th percentile of the latencies (nearest rank),
// or 0 if there are none.
func (m measurement) percentile(p float64) time.Duration {
	if len(m.latencies) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(m.latencies))
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// worker is what one client collected.
type worker struct {
	ok        int
	errors    map[string]int
	sample    string
	latencies []time.Duration
	keys, ids []string
}

// run sends ph's requests to t from clients closed-loop clients until d has
// passed, and waits for the last answers. keyPrefix makes the new phase's
// Idempotency-Keys unique in the run; the new phase replaces t's keys and
// ids with the payments it created.
func run(ctx context.Context, t *target, ph phase, clients int, d time.Duration, keyPrefix string) measurement {
	if ph != newPayments && len(t.ids) == 0 {
		return measurement{errors: map[string]int{"no payments to replay or read": 1}, sample: "the new phase created none", elapsed: time.Nanosecond}
	}
	var next atomic.Int64
	workers := make([]worker, clients)
	var wg sync.WaitGroup
	cpuBefore, cpuOK := t.cpu()
	begin := time.Now()
	end := begin.Add(d)
	for i := range workers {
		w := &workers[i]
		w.errors = map[string]int{}
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				n := int(next.Add(1) - 1)
				var req *http.Request
				var key string
				switch ph {
				case newPayments:
					key = fmt.Sprintf("%s-%d", keyPrefix, n)
					req = t.post(ctx, key)
				case replays:
					req = t.post(ctx, t.keys[n%len(t.keys)])
				case gets:
					req, _ = http.NewRequestWithContext(ctx, http.MethodGet, t.base+"/v1/payments/"+t.ids[n%len(t.ids)], nil)
					if t.auth != "" {
						req.Header.Set("Authorization", t.auth)
					}
				}
				start := time.Now()
				resp, err := t.client.Do(req)
				if err != nil {
					w.fail("no answer", err.Error())
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				took := time.Since(start)
				if err != nil {
					w.fail("body cut short", err.Error())
					continue
				}
				if problem := check(ph, resp); problem != "" {
					w.fail(problem, fmt.Sprintf("%s %s: %s %.200s", req.Method, req.URL.Path, resp.Status, body))
					continue
				}
				if ph == newPayments {
					var p struct {
						ID string `json:"id"`
					}
					if json.Unmarshal(body, &p) != nil || p.ID == "" {
						w.fail("201 without an id", fmt.Sprintf("%.200s", body))
						continue
					}
					w.keys, w.ids = append(w.keys, key), append(w.ids, p.ID)
				}
				w.ok++
				w.latencies = append(w.latencies, took)
			}
		})
	}
	wg.Wait()
	m := measurement{errors: map[string]int{}, elapsed: time.Since(begin)}
	if cpuAfter, ok := t.cpu(); ok && cpuOK {
		m.cpu, m.cpuOK = cpuAfter-cpuBefore, true
	}
	var keys, ids []string
	for _, w := range workers {
		m.ok += w.ok
		m.latencies = append(m.latencies, w.latencies...)
		for k, c := range w.errors {
			m.errors[k] += c
		}
		if m.sample == "" {
			m.sample = w.sample
		}
		keys, ids = append(keys, w.keys...), append(ids, w.ids...)
	}
	if ph == newPayments {
		t.keys, t.ids = keys, ids
	}
	return m
}

func (w *worker) fail(kind, sample string) {
	w.errors[kind]++
	if w.sample == "" {
		w.sample = sample
	}
}

func (t *target) post(ctx context.Context, key string) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/v1/payments", strings.NewReader(paymentBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	if t.auth != "" {
		req.Header.Set("Authorization", t.auth)
	}
	return req
}

// check returns what is wrong with an answer to ph, or "" if it is correct.
func check(ph phase, resp *http.Response) string {
	want := http.StatusCreated
	if ph == gets {
		want = http.StatusOK
	}
	if resp.StatusCode != want {
		return "HTTP " + resp.Status
	}
	replayed := resp.Header.Get("Idempotent-Replayed") == "true"
	switch {
	case ph == newPayments && replayed:
		return "new payment answered as a replay"
	case ph == replays && !replayed:
		return "replay without Idempotent-Replayed: true"
	}
	return ""
}
