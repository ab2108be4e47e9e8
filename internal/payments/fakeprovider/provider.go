// Package fakeprovider is an in-memory fake of a card payment provider's
// charges and refunds API with switchable fault injection, for tests, local
// runs and game days.
//
// It reproduces what a payment client has to survive — declines, refused
// refunds, idempotent replays, outages, slow answers and the ambiguous "done,
// but the answer was lost" outcome — and nothing more. The trade-offs follow
// from that: the ledger lives in memory, so a restart forgets every charge
// and refund; there is no authentication, so anyone who can reach it can
// change its faults; and currencies and references are echoed, not
// validated. Every request is decided under one mutex, which serialises the
// fake but makes "one key, one charge", "one key, one refund" and "never
// refund more than was charged" trivially true under any concurrency. Fault
// decisions draw from an injectable random source (see WithRandom), so tests
// can make them deterministic.
//
// The API, all in JSON:
//
//	POST /v1/charges    {"amount","currency","reference","expires_at"} → 201 the charge, or 402 if declined
//	GET  /v1/charges    → {"data":[every charge],"count":n}
//	GET  /v1/charges?idempotency_key=K → {"data":[the charge made with K, if any]}
//	POST /v1/refunds    {"charge","amount","reference","expires_at"} → 201 the refund; 404 unknown charge;
//	                    422 declined charge, or more than the charge has left to refund
//	GET  /v1/refunds    → {"data":[every refund],"count":n}
//	GET  /v1/refunds?idempotency_key=K → {"data":[the refund made with K, if any]}
//	GET, PUT, DELETE /_faults → the faults in force (see Faults); never delayed
//
// The POSTs need an Idempotency-Key header: the same key again answers what
// the first request came to, and a key reused for a different request is
// refused (422 idempotency_key_reused). Charges and refunds keep their keys
// apart. Errors answer {"error":code,"message":text}.
//
// expires_at (RFC 3339, optional) is the latest time at which the request
// may be carried out. A request that reaches its turn later (it waited in a
// backlog, or its sender froze before sending it) does nothing and answers
// 409 request_expired; a replay of what was done in time still answers.
// It is what lets a client that gave up on a request conclude, once the
// expiry has passed, that "no charge found" means none will ever be made.
package fakeprovider

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Provider is the fake provider: an http.Handler serving the charges and
// refunds API under /v1/ and the fault controls under /_faults. Build one
// with New; it is safe for concurrent use.
type Provider struct {
	mux *http.ServeMux

	mu           sync.Mutex
	random       func() float64 // called with mu held, so it need not be safe for concurrent use
	now          func() time.Time
	newChargeID  func() string // called with mu held, likewise
	newRefundID  func() string // likewise
	faults       Faults
	charges      []Charge       // in the order they were made, for listing
	chargesByKey map[string]int // idempotency key → index into charges
	chargesByID  map[string]int // charge ID → index into charges, for refunds
	refunds      []Refund       // in the order they were made, for listing
	// Refund keys are a space apart from charge keys: each endpoint answers
	// for its own.
	refundsByKey map[string]refundOutcome // idempotency key → what its first request came to
	refunded     map[string]int64         // charge ID → the sum of its refunds

	undelayed     chan struct{} // closed by StopDelaying
	stopDelaysOne sync.Once
}

// Option configures a Provider built by New.
type Option func(*Provider)

// WithRandom makes fault decisions draw from random, which must return values
// in [0, 1). A fault with rate r happens when random() < r; a rate of 0 never
// draws, so a scripted sequence is consumed only by the faults that are on.
// The default is math/rand/v2's Float64.
func WithRandom(random func() float64) Option {
	return func(p *Provider) { p.random = random }
}

// WithClock makes the provider read the time, for request expiries, from
// now instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(p *Provider) { p.now = now }
}

// WithChargeIDs makes the provider name new charges with newID instead of
// "ch_" and 24 random hex digits. It is called once per recorded charge,
// while the charge is being recorded, and must not return the same ID twice.
func WithChargeIDs(newID func() string) Option {
	return func(p *Provider) { p.newChargeID = newID }
}

// WithRefundIDs makes the provider name new refunds with newID instead of
// "rf_" and 24 random hex digits. It is called once per recorded refund,
// while the refund is being recorded, and must not return the same ID twice.
func WithRefundIDs(newID func() string) Option {
	return func(p *Provider) { p.newRefundID = newID }
}

// New returns a provider with an empty ledger and no faults.
func New(opts ...Option) *Provider {
	p := &Provider{
		random:       rand.Float64,
		now:          time.Now,
		newChargeID:  func() string { return randomID("ch_") },
		newRefundID:  func() string { return randomID("rf_") },
		chargesByKey: make(map[string]int),
		chargesByID:  make(map[string]int),
		refundsByKey: make(map[string]refundOutcome),
		refunded:     make(map[string]int64),

		undelayed: make(chan struct{}),
	}
	for _, opt := range opts {
		opt(p)
	}
	p.mux = p.routes()
	return p
}

func (p *Provider) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/charges", p.delayed(p.createCharge))
	mux.Handle("GET /v1/charges", p.delayed(p.listCharges))
	mux.Handle("POST /v1/refunds", p.delayed(p.createRefund))
	mux.Handle("GET /v1/refunds", p.delayed(p.listRefunds))
	mux.Handle("GET /_faults", immediate(p.getFaults))
	mux.Handle("PUT /_faults", immediate(p.putFaults))
	mux.Handle("DELETE /_faults", immediate(p.deleteFaults))

	// ServeMux would answer these in text/plain; a client of a JSON API
	// should be able to decode every answer it gets.
	mux.Handle("/v1/charges", methodNotAllowed("GET, HEAD, POST"))
	mux.Handle("/v1/refunds", methodNotAllowed("GET, HEAD, POST"))
	mux.Handle("/_faults", methodNotAllowed("DELETE, GET, HEAD, PUT"))
	mux.Handle("/", immediate(func(r *http.Request) answer {
		return errorAnswer(http.StatusNotFound, "not_found", "no route for "+r.Method+" "+r.URL.Path)
	}))
	return mux
}

// StopDelaying sends every answer the latency fault is holding at once,
// and delays none after it. Call it when the server shuts down
// (http.Server.RegisterOnShutdown): Shutdown waits for handlers, and does
// not cancel their contexts, so it would otherwise be held for up to
// MaxLatency while the clients went unanswered.
func (p *Provider) StopDelaying() {
	p.stopDelaysOne.Do(func() { close(p.undelayed) })
}

// ServeHTTP serves the charges and refunds API and the fault controls.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mux.ServeHTTP(w, r)
}

// delayed serves h's answer after the injected latency. h decides first —
// and may record a charge or refund — and only then does the provider wait,
// so a client that gives up during the wait leaves a charge or refund it
// never heard about: the ambiguous outcome the latency fault exists to
// produce. The wait ends with the request's context, so an abandoned request
// frees its goroutine at once instead of holding it for up to MaxLatency;
// and with StopDelaying, when the answer goes out at once.
func (p *Provider) delayed(h func(*http.Request) answer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		a := h(r)
		if !wait(r.Context(), p.Faults().Latency(), p.undelayed) {
			return // nobody is listening any more; what h recorded stands
		}
		a.write(w)
	})
}

// immediate serves h's answer without the injected latency: the fault
// controls must stay quick, or a test could not switch a slow provider off.
func immediate(h func(*http.Request) answer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		h(r).write(w)
	})
}

func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		errorAnswer(http.StatusMethodNotAllowed, "method_not_allowed",
			r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+allow).write(w)
	})
}

// wait blocks for d, or until cut is closed, or until ctx ends, whichever
// comes first, and reports whether the answer should still be sent: false
// only when ctx ended.
func wait(ctx context.Context, d time.Duration, cut <-chan struct{}) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-cut:
		return true
	case <-ctx.Done():
		return false
	}
}

// draw reports whether a fault with the given rate happens this time.
// The caller holds p.mu.
func (p *Provider) draw(rate float64) bool {
	return rate > 0 && p.random() < rate
}

// randomID returns prefix and 24 random hex digits.
func randomID(prefix string) string {
	var b [12]byte
	// crypto/rand.Read never returns an error: since Go 1.24 it crashes the
	// program instead, as there is no safe way to go on without randomness.
	_, _ = crand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
