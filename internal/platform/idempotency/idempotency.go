// Package idempotency makes a POST route safe to retry: the same request
// with the same Idempotency-Key does its work at most once and answers
// every retry with the first final answer, byte for byte, whatever the
// client, the network, Redis or a crash does.
//
// Postgres is the truth. Each key has one record (Keys), unique per scope
// and key, written in the same statement as the resource its work makes,
// and holding the request's fingerprint, a lease naming the one holder that
// may drive the work, and, once there is one, the final response. Every
// write after the claim is fenced by the lease's token, in the statement
// that writes, so a holder whose lease was taken over changes nothing.
//
// Redis is the fast path (Cache): it replays completed responses without
// touching Postgres and keeps obvious duplicates in flight away from it,
// in one round trip each way. It decides nothing Postgres would decide
// otherwise: losing its data, or Redis itself, costs only speed.
//
// Guard puts both in front of a route: the route's handler gets the
// request decoded once and an explicit Request to claim, and answers with
// a Response. Nothing here knows what the work is.
package idempotency

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"embed"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// Errors callers branch on.
var (
	// ErrInFlight: another request holds the key and is doing its work.
	ErrInFlight = errors.New("a request with this idempotency key is in flight")
	// ErrKeyReused: the key was used before for a different request.
	ErrKeyReused = errors.New("idempotency key reused with a different request")
	// ErrLeaseLost: the key's lease was taken over; the caller must not
	// act on the work any more.
	ErrLeaseLost = errors.New("idempotency lease lost")
	// ErrAttemptTooRecent: a completion conditional on the work having
	// been left alone for a while was refused: it was attempted since.
	ErrAttemptTooRecent = errors.New("work attempted too recently")
)

// Request identifies one idempotent request: whose key it is, the key, and
// what was asked.
type Request struct {
	Scope       string // the key's owner, such as the client
	Key         string // the Idempotency-Key header
	Fingerprint string // see Fingerprint
}

// Response is an answer as the client gets it. A final one is stored with
// its key and replayed.
type Response struct {
	Status int
	Header http.Header // Content-Type, Location: what a replay repeats
	Body   []byte
	// Replayed: the answer is the one stored for the key by an earlier
	// request, not this request's own.
	Replayed bool
	// Final: the answer is the work's outcome, stored with the key; the
	// fast path keeps it for replays. A refusal or an outcome still
	// unknown is not final, and leaves the key usable.
	Final bool
}

// Fingerprint identifies a request for idempotency: its method, route
// pattern, scope and canonical body (as web.DecodeStrict returns it), so
// that a key reused for a different request is caught. Each part is
// length-prefixed, so no two different inputs spell the same.
func Fingerprint(method, route, scope string, canonical []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(method), []byte(route), []byte(scope), canonical} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations creates the key records' table. A service applies it before
// the migrations of the domains whose work it guards.
var Migrations = postgres.Migrations{Files: mustSub(migrationFiles, "migrations"), Table: "goose_idempotency_version"}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err) // dir is a constant embedded above
	}
	return sub
}

// Metrics counts idempotent requests by outcome: new (did the work),
// replay (answered with a stored response), in_flight (refused: another
// request holds the key), mismatch (refused: the key was used for another
// request); and the fast path's failures.
type Metrics struct {
	outcomes    *prometheus.CounterVec
	cacheErrors prometheus.Counter
}

// Outcomes of an idempotent request.
const (
	OutcomeNew      = "new"
	OutcomeReplay   = "replay"
	OutcomeInFlight = "in_flight"
	OutcomeMismatch = "mismatch"
)

// NewMetrics registers the metrics idempotency_total{outcome} and
// idempotency_store_errors_total.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idempotency_total",
			Help: "Idempotent requests by outcome: new, replay, in_flight, mismatch.",
		}, []string{"outcome"}),
		cacheErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "idempotency_store_errors_total",
			Help: "Redis operations of the idempotency fast path that failed; requests fell back to Postgres.",
		}),
	}
	for _, o := range []string{OutcomeNew, OutcomeReplay, OutcomeInFlight, OutcomeMismatch} {
		m.outcomes.WithLabelValues(o) // export zeros, so rates work from the start
	}
	for _, c := range []prometheus.Collector{m.outcomes, m.cacheErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("idempotency metrics: %w", err)
		}
	}
	return m, nil
}

// Observe counts one outcome.
func (m *Metrics) Observe(outcome string) { m.outcomes.WithLabelValues(outcome).Inc() }

// Config times the claims on keys and the fast path.
type Config struct {
	// Lease is how long a claim holds a key before another request may
	// take it over: how long a crashed request blocks its key. It must
	// outlast everything a request can still do.
	Lease time.Duration
	// ResponseTTL is how long the fast path keeps a completed response.
	ResponseTTL time.Duration
	// SettleTimeout is the budget of the writes that record the outcome
	// of a key's side effect: the effect's call ends this long before the
	// request's deadline, and the writes get this long of their own.
	SettleTimeout time.Duration
}

// DefaultConfig holds a key 30 seconds, caches answers a day, and gives
// recording an outcome 2 seconds.
func DefaultConfig() Config {
	return Config{Lease: 30 * time.Second, ResponseTTL: 24 * time.Hour, SettleTimeout: 2 * time.Second}
}

// Bind declares IDEMPOTENCY_LEASE, IDEMPOTENCY_RESPONSE_TTL and
// SETTLE_TIMEOUT after b's prefix.
func (c *Config) Bind(b *config.Binder) {
	b.Duration("IDEMPOTENCY_LEASE", &c.Lease, "how long a request holds its key before a retry may take over (how long a crashed request blocks it); longer than REQUEST_TIMEOUT + SETTLE_TIMEOUT")
	b.Duration("IDEMPOTENCY_RESPONSE_TTL", &c.ResponseTTL, "how long Redis caches completed responses (Postgres keeps them for good)")
	b.Duration("SETTLE_TIMEOUT", &c.SettleTimeout, "budget for recording a side effect's outcome; its call ends this long before REQUEST_TIMEOUT, and the write is not cut short by it")
}
