package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The load is open-model: requests leave on a fixed schedule, whether or
// not earlier ones have been answered, as the requests of independent
// clients do; latency runs from the scheduled time, so a stalled server
// cannot hide its queue (no coordinated omission).
//
// Of every 10 scheduled requests, 6 create a payment with a new key, 1
// sends an earlier create again with its key (a client retrying a request
// it has an answer to), 1 refunds part of a succeeded payment, and 2 read
// a payment back: the newest created, or the one most recently refunded (a
// client reading its own write). A client whose
// POST got no answer, or a 5xx, sends it again with the same key after a
// backoff (full jitter, but never sooner than Retry-After asks, capped at
// 2 s), up to 3 times: the retries that the idempotency keys make safe.

// Operations, as samples name them.
const (
	opCreate    = "create"
	opDuplicate = "duplicate"
	opRefund    = "refund"
	opGet       = "get"
)

// sample is one request.
type sample struct {
	Sent     time.Time // scheduled, or sent for a retry
	Latency  time.Duration
	Status   int // 0 when no HTTP answer came
	Op       string
	Retry    bool   // a client's re-send of an earlier request with its key
	Key      string // the POST's Idempotency-Key
	Instance string
	Stale    bool // a read that missed a write acknowledged over staleAllowed before it

	retryAfter time.Duration // the answer's Retry-After, at most maxRetryAfter
	err        error         // why no answer came
}

// maxRetryAfter caps the Retry-After the load's clients honour.
const maxRetryAfter = 2 * time.Second

// outcome is the sample's bucket in the report.
func (s sample) outcome() string {
	switch {
	case s.Status == 0:
		return "no answer"
	case s.Status == http.StatusTooManyRequests:
		return "429"
	case s.Status == http.StatusServiceUnavailable:
		return "503"
	case s.Status >= 500:
		return "5xx"
	case s.Status >= 400:
		return "4xx"
	default:
		return strconv.Itoa(s.Status)
	}
}

// load sends the requests and keeps what was acknowledged.
type load struct {
	lb     *balancer
	client *http.Client
	acks   *acks

	mu      sync.Mutex
	samples []sample
	rate    float64 // scheduled requests per second
}

func newLoad(lb *balancer, acks *acks, rate float64) *load {
	return &load{
		lb: lb, acks: acks, rate: rate,
		client: &http.Client{
			Timeout:   6 * time.Second, // beyond the instances' REQUEST_TIMEOUT
			Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second},
		},
	}
}

// SetRate changes the schedule from now on.
func (l *load) SetRate(perSecond float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate = perSecond
}

// Take returns the samples so far and forgets them.
func (l *load) Take() []sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.samples
	l.samples = nil
	return s
}

func (l *load) record(s sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.samples = append(l.samples, s)
}

// run sends the schedule until ctx ends, then waits for every request it
// started (each ends within the client's timeout and its retries).
func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	next := time.Now()
	for n := 0; ; n++ {
		l.mu.Lock()
		rate := l.rate
		l.mu.Unlock()
		next = next.Add(time.Duration(float64(time.Second) / rate))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		at := next
		op := pickOp(n)
		wg.Go(func() { l.send(ctx, op, at, n) })
	}
}

// pickOp spreads the operations evenly over every 10 requests.
func pickOp(n int) string {
	switch n % 10 {
	case 3:
		return opDuplicate
	case 5:
		return opRefund
	case 7, 9:
		return opGet
	default:
		return opCreate
	}
}

func (l *load) send(ctx context.Context, op string, at time.Time, n int) {
	switch op {
	case opCreate:
		amount := rand.Int64N(99_000) + 100
		if amount%1000 == 402 { // the fake provider declines these
			amount++
		}
		body := fmt.Sprintf(`{"amount":%d,"currency":"usd"}`, amount)
		l.post(ctx, op, at, "/v1/payments", newKey(), body, amount, "")
	case opDuplicate:
		c, ok := l.acks.recentCreate()
		if !ok {
			l.send(ctx, opCreate, at, n)
			return
		}
		l.post(ctx, op, at, "/v1/payments", c.key, c.body, c.amount, "")
	case opRefund:
		p, ok := l.acks.refundable()
		if !ok {
			l.send(ctx, opCreate, at, n)
			return
		}
		amount := max(p.amount/10, 1)
		l.post(ctx, op, at, "/v1/payments/"+p.id+"/refunds", newKey(), fmt.Sprintf(`{"amount":%d}`, amount), amount, p.id)
	case opGet:
		l.read(ctx, at, n)
	}
}

// read reads back, in turn, the newest payment created (a client reading
// its own write) and the payment of a refund acknowledged more than
// staleAllowed ago. Reads may go to a replica as long as it is known to
// hold every commit up to DATABASE_REPLICA_MAX_LAG ago, so a write younger
// than that may not show yet, by design; an older one must. The read is
// stale when it does not show it: the payment missing, or the refund not
// counted.
func (l *load) read(ctx context.Context, at time.Time, n int) {
	id, refunded := "", int64(0)
	if r, ok := l.acks.refundedBefore(at.Add(-staleAllowed)); ok && n%20 >= 10 {
		id, refunded = r.paymentID, r.total
	} else if id, _, ok = l.acks.newest(); !ok {
		l.send(ctx, opCreate, at, n)
		return
	}
	s, a := l.do(http.MethodGet, "/v1/payments/"+id, "", "", at)
	s.Op = opGet
	s.Stale = refunded > 0 && (s.Status == http.StatusNotFound || (s.Status == http.StatusOK && a.AmountRefunded < refunded))
	l.record(s)
}

// staleAllowed is the instances' DATABASE_REPLICA_MAX_LAG, and a little
// more for the client's view of when a write was acknowledged.
const staleAllowed = time.Second + 100*time.Millisecond

// post sends a POST and, while the answer is lost or a 5xx, sends it again
// with the same key; no more once ctx (the run's schedule) has ended.
func (l *load) post(ctx context.Context, op string, at time.Time, path, key, body string, amount int64, paymentID string) {
	backoff := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		s, answer := l.do(http.MethodPost, path, key, body, at)
		s.Op, s.Retry, s.Key = op, attempt > 0, key
		l.record(s)
		if s.Status >= 200 && s.Status < 300 {
			if paymentID == "" {
				l.acks.payment(key, body, amount, answer)
			} else {
				l.acks.refund(paymentID, amount, answer)
			}
		}
		if (s.Status != 0 && s.Status < 500) || attempt == 3 {
			return
		}
		if sleep(ctx, max(rand.N(backoff), s.retryAfter)) != nil {
			return
		}
		backoff *= 2
		at = time.Now()
	}
}

// answer is the part of a payment's or refund's body the load keeps.
type answer struct {
	ID             string `json:"id"`
	Status         string `json:"status"`
	AmountRefunded int64  `json:"amount_refunded"`
}

func (l *load) do(method, path, key, body string, at time.Time) (sample, answer) {
	api, name, ok := l.lb.pick()
	s := sample{Sent: at, Instance: name}
	if !ok {
		s.Latency = time.Since(at)
		return s, answer{}
	}
	req, err := http.NewRequest(method, api+path, bytes.NewBufferString(body))
	if err != nil {
		s.Latency = time.Since(at)
		return s, answer{}
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.client.Do(req)
	if err != nil {
		s.Latency, s.err = time.Since(at), err
		return s, answer{}
	}
	defer resp.Body.Close()
	var a answer
	raw, err := io.ReadAll(resp.Body)
	s.Latency = time.Since(at)
	if err != nil {
		return s, answer{}
	}
	s.Status = resp.StatusCode
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		s.retryAfter = min(time.Duration(secs)*time.Second, maxRetryAfter)
	}
	_ = json.Unmarshal(raw, &a) // problem bodies have no id: a stays empty
	return s, a
}

func newKey() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b)
	return "gd-" + hex.EncodeToString(b)
}
