package resilience

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// This file is the generic half of idempotency: request fingerprints, the
// Redis fast path (cached responses and the cross-replica in-flight lock)
// and the HTTP middleware that uses it. It knows nothing about payments.
//
// Redis is an accelerator, never the source of truth: every decision it
// makes is one the handler's own durable store (Postgres, for payments)
// would also make. If Redis loses its data — a flush, a restart, a
// failover — or is down, requests fall through to the durable store, which
// still guarantees at most one charge. Redis only makes the common cases
// (a replay, a duplicate in flight) cheap.

// Sentinels of IdempotencyStore.
var (
	// ErrLeaseHeld: another request holds the key's in-flight lock.
	ErrLeaseHeld = errors.New("idempotency key in flight")
	// ErrLeaseLost: this request's lock expired and is no longer its own.
	ErrLeaseLost = errors.New("idempotency lease lost")
)

// IdempotencyStore keeps, in Redis, an in-flight lock and the completed
// response of each (scope, key). Every operation is bounded by a short
// timeout and guarded by a circuit breaker: when Redis is slow or down,
// callers learn at once and fall back, instead of each paying a timeout.
type IdempotencyStore struct {
	rdb         redis.UniversalClient
	prefix      string
	responseTTL time.Duration
	opTimeout   time.Duration
	breaker     *Breaker
}

// NewIdempotencyStore returns a store in rdb under keys starting with
// prefix. Completed responses are kept for responseTTL.
func NewIdempotencyStore(rdb redis.UniversalClient, prefix string, responseTTL, opTimeout time.Duration, breaker *Breaker) *IdempotencyStore {
	return &IdempotencyStore{rdb: rdb, prefix: prefix, responseTTL: responseTTL, opTimeout: opTimeout, breaker: breaker}
}

// RedisOutcome classifies Redis errors for a circuit breaker: any error is
// Redis failing (a missing key is not an error here).
func RedisOutcome(error) Outcome { return Failure }

func (s *IdempotencyStore) key(scope, key, kind string) string {
	// Scope and key are length-prefixed: no choice of either can make
	// two different pairs spell the same Redis key.
	return fmt.Sprintf("%s:%d:%s:%d:%s:%s", s.prefix, len(scope), scope, len(key), key, kind)
}

// do runs one Redis operation under the breaker and the timeout. The
// timeout is inside: a slow Redis is Redis failing, while the caller's own
// cancellation (outside) is excluded from the breaker's counts.
func (s *IdempotencyStore) do(ctx context.Context, op func(context.Context) error) error {
	return s.breaker.Execute(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, s.opTimeout)
		defer cancel()
		return op(ctx)
	})
}

// Lease is a held in-flight lock. Its token proves ownership: only the
// holder of the token can extend or release it.
type Lease struct {
	key   string
	token string
}

// Token is the lease's owner token.
func (l Lease) Token() string { return l.token }

// Claim takes the in-flight lock of (scope, key) for ttl: SET NX PX with a
// random owner token. It returns ErrLeaseHeld if another request has it.
func (s *IdempotencyStore) Claim(ctx context.Context, scope, key string, ttl time.Duration) (Lease, error) {
	l := Lease{key: s.key(scope, key, "lock"), token: newToken()}
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		ok, err = s.rdb.SetNX(ctx, l.key, l.token, ttl).Result()
		return err
	})
	switch {
	case err != nil:
		return Lease{}, fmt.Errorf("claim idempotency key %q: %w", key, err)
	case !ok:
		return Lease{}, ErrLeaseHeld
	}
	return l, nil
}

// The lock's value is its owner's token. Releasing compares it in the
// same atomic step: an owner whose lease expired, and whose key another
// request has since claimed, must never delete the new owner's lock. (A
// GET then DEL from Go would have a gap between the two.)
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)

// Release deletes the lock if it is still the lease's, or returns
// ErrLeaseLost and leaves the new owner's lock alone.
func (s *IdempotencyStore) Release(ctx context.Context, l Lease) error {
	var n int64
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		n, err = releaseScript.Run(ctx, s.rdb, []string{l.key}, l.token).Int64()
		return err
	})
	switch {
	case err != nil:
		return err
	case n == 0:
		return ErrLeaseLost
	}
	return nil
}

// StoredResponse is a completed response, kept so that a retry gets the
// same bytes back.
type StoredResponse struct {
	Fingerprint string      `json:"fingerprint"`
	Status      int         `json:"status"`
	Header      http.Header `json:"header"`
	Body        []byte      `json:"body"`
}

// Response returns the stored response of (scope, key), if any.
func (s *IdempotencyStore) Response(ctx context.Context, scope, key string) (StoredResponse, bool, error) {
	var raw []byte
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		raw, err = s.rdb.Get(ctx, s.key(scope, key, "response")).Bytes()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		return err
	})
	if err != nil || raw == nil {
		return StoredResponse{}, false, err
	}
	var r StoredResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		return StoredResponse{}, false, fmt.Errorf("decode stored response of %q: %w", key, err)
	}
	return r, true, nil
}

// SaveResponse stores the completed response of (scope, key).
func (s *IdempotencyStore) SaveResponse(ctx context.Context, scope, key string, r StoredResponse) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.do(ctx, func(ctx context.Context) error {
		return s.rdb.Set(ctx, s.key(scope, key, "response"), raw, s.responseTTL).Err()
	})
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// IdempotencyMetrics counts idempotent requests by outcome: new (did the
// work), replay (answered from a stored response), in_flight (refused:
// another request with the key is running), mismatch (refused: the key was
// used for another request). The middleware and the durable store's owner
// both report to it.
type IdempotencyMetrics struct {
	outcomes    *prometheus.CounterVec
	storeErrors prometheus.Counter
}

// Idempotency outcomes.
const (
	OutcomeNew      = "new"
	OutcomeReplay   = "replay"
	OutcomeInFlight = "in_flight"
	OutcomeMismatch = "mismatch"
)

// NewIdempotencyMetrics registers the idempotency metrics.
func NewIdempotencyMetrics(reg prometheus.Registerer) (*IdempotencyMetrics, error) {
	m := &IdempotencyMetrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idempotency_total",
			Help: "Idempotent requests by outcome: new, replay, in_flight, mismatch.",
		}, []string{"outcome"}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "idempotency_store_errors_total",
			Help: "Redis operations of the idempotency fast path that failed; requests fell back to the durable store.",
		}),
	}
	for _, o := range []string{OutcomeNew, OutcomeReplay, OutcomeInFlight, OutcomeMismatch} {
		m.outcomes.WithLabelValues(o) // export zeros, so rates work from the start
	}
	if err := registerAll(reg, m.outcomes, m.storeErrors); err != nil {
		return nil, fmt.Errorf("idempotency metrics: %w", err)
	}
	return m, nil
}

// Observe counts one outcome.
func (m *IdempotencyMetrics) Observe(outcome string) { m.outcomes.WithLabelValues(outcome).Inc() }

// IdempotencyConfig configures Idempotency.Middleware.
type IdempotencyConfig struct {
	Store   *IdempotencyStore
	Metrics *IdempotencyMetrics
	Log     *slog.Logger
	// Lease is how long the in-flight lock is held before it expires,
	// should its holder die. It is never extended: it must outlast the
	// longest request. Were it lost anyway (a flush, a failover), the
	// durable store still decides.
	Lease time.Duration
	// MaxBody bounds the body read to fingerprint the request.
	MaxBody int64
	// Scope returns the owner of the request's keys (the client id).
	Scope func(*http.Request) string
	// Route names the operation in fingerprints (the route pattern).
	Route string
	// ValidKey reports whether a key is acceptable; requests without
	// one pass straight to the handler, which rejects them.
	ValidKey func(string) bool
	// Valid reports whether the handler would accept the body. Others
	// pass straight to the handler, which refuses them: a malformed
	// request is refused as malformed, whatever Redis holds for its key,
	// just as it is when Redis is down.
	Valid func(body []byte) bool
	// Final reports whether a response status is a completed outcome to
	// store and replay. Anything else (validation errors, 409, 429, 503,
	// an outcome still unknown) leaves the key usable.
	Final func(status int) bool
	// InFlight and Mismatch write the refusals (409 and 422).
	InFlight func(w http.ResponseWriter, r *http.Request)
	Mismatch func(w http.ResponseWriter, r *http.Request)
}

// Idempotency is the fast path of idempotent requests.
type Idempotency struct{ cfg IdempotencyConfig }

// NewIdempotency returns the middleware's owner.
func NewIdempotency(cfg IdempotencyConfig) *Idempotency { return &Idempotency{cfg: cfg} }

// Middleware wraps the handler of one idempotent route:
//
//  1. a response stored for the key is replayed byte for byte, with
//     Idempotent-Replayed: true, or refused if the key was used for a
//     different request (Mismatch);
//  2. otherwise the key's in-flight lock is claimed, or the request is
//     refused (InFlight) while another holds it;
//  3. the handler runs; a final response is stored; the lock is released.
//
// Any Redis failure skips the fast path: the handler runs, and its durable
// store decides.
func (i *Idempotency) Middleware(next http.Handler) http.Handler {
	c := i.cfg
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		if !c.ValidKey(key) {
			next.ServeHTTP(w, r)
			return
		}
		body, complete := peekBody(r, c.MaxBody)
		if !complete || !c.Valid(body) {
			next.ServeHTTP(w, r) // too large or invalid: the handler says so
			return
		}
		fingerprint, err := Fingerprint(r.Method, c.Route, c.Scope(r), body)
		if err != nil {
			next.ServeHTTP(w, r)
			return
		}
		scope, ctx := c.Scope(r), r.Context()

		stored, found, err := c.Store.Response(ctx, scope, key)
		switch {
		case err != nil:
			i.degraded("read stored response", err)
		case found && stored.Fingerprint != fingerprint:
			c.Metrics.Observe(OutcomeMismatch)
			c.Mismatch(w, r)
			return
		case found:
			c.Metrics.Observe(OutcomeReplay)
			writeStored(w, stored)
			return
		}

		lease, err := c.Store.Claim(ctx, scope, key, c.Lease)
		switch {
		case errors.Is(err, ErrLeaseHeld):
			c.Metrics.Observe(OutcomeInFlight)
			c.InFlight(w, r)
			return
		case err != nil:
			i.degraded("claim in-flight lock", err)
		default:
			defer func() {
				// Detached: the client may be gone, the lock must still go.
				err := c.Store.Release(context.WithoutCancel(ctx), lease)
				if errors.Is(err, ErrLeaseLost) {
					c.Log.Warn("idempotency lock expired before the request ended; left to its new owner", "key", key)
				} else if err != nil {
					i.degraded("release in-flight lock", err)
				}
			}()
		}

		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if c.Final(rec.status) {
			resp := StoredResponse{Fingerprint: fingerprint, Status: rec.status, Header: storedHeader(w.Header()), Body: rec.body.Bytes()}
			if err := c.Store.SaveResponse(context.WithoutCancel(ctx), scope, key, resp); err != nil {
				i.degraded("store response", err)
			}
		}
	})
}

func (i *Idempotency) degraded(op string, err error) {
	i.cfg.Metrics.storeErrors.Inc()
	if !errors.Is(err, ErrBreakerOpen) { // logged once, when it opened
		i.cfg.Log.Warn("idempotency fast path unavailable; using the durable store", "op", op, "err", err)
	}
}

// peekBody reads up to max bytes of the body for fingerprinting and puts
// them back, so the handler reads the body as sent. complete is false if
// the body is larger, or could not be read.
func peekBody(r *http.Request, max int64) (body []byte, complete bool) {
	data, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	r.Body = readCloser{io.MultiReader(bytes.NewReader(data), r.Body), r.Body}
	return data, err == nil && int64(len(data)) <= max
}

type readCloser struct {
	io.Reader
	io.Closer
}

// replayedHeaders are the response headers stored with a response and
// replayed with it; the rest (X-Request-Id, Date) belong to each exchange.
var replayedHeaders = []string{"Content-Type", "Location"}

func storedHeader(h http.Header) http.Header {
	out := http.Header{}
	for _, name := range replayedHeaders {
		if v := h.Get(name); v != "" {
			out.Set(name, v)
		}
	}
	return out
}

// writeStored replays a stored response.
func writeStored(w http.ResponseWriter, s StoredResponse) {
	for name, values := range s.Header {
		w.Header()[name] = values
	}
	w.Header().Set("Idempotent-Replayed", "true")
	w.WriteHeader(s.Status)
	_, _ = w.Write(s.Body)
}

// recorder passes a response through and keeps a copy of it.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Fingerprint identifies a request for idempotency purposes: the same
// method, route, client and JSON body give the same fingerprint, whatever
// the key order or whitespace of the body. A client that reuses an
// idempotency key for a different request is caught by comparing
// fingerprints.
//
// route should be the route pattern (/v1/payments), not the raw path, so
// that equivalent spellings of a path do not differ. The body must be one
// JSON value; anything else is an error.
func Fingerprint(method, route, clientID string, body []byte) (string, error) {
	canonical, err := CanonicalJSON(body)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	// Length-prefix each part so that no two different inputs can be
	// spelt the same once concatenated.
	for _, part := range [][]byte{[]byte(method), []byte(route), []byte(clientID), canonical} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CanonicalJSON re-encodes one JSON value with object keys sorted and no
// insignificant whitespace. Numbers keep their exact text.
func CanonicalJSON(body []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("canonical JSON: data after the JSON value")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// encoding/json writes map keys in sorted order: that is the canonical
	// form.
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
