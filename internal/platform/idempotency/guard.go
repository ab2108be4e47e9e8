package idempotency

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Problems of idempotent requests.
var (
	InvalidKey = web.Kind{Status: http.StatusBadRequest, Slug: "invalid-idempotency-key", Title: "Missing or invalid Idempotency-Key header"}
	InFlight   = web.Kind{Status: http.StatusConflict, Slug: "idempotency-key-in-flight", Title: "A request with this idempotency key is in progress"}
	KeyReused  = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "idempotency-key-reused", Title: "Idempotency key reused with a different request"}
)

// MaxKey is the longest Idempotency-Key accepted.
const MaxKey = 255

// ValidKey reports whether key is 1 to MaxKey printable ASCII characters
// without spaces.
func ValidKey(key string) bool {
	if len(key) == 0 || len(key) > MaxKey {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] > '~' {
			return false
		}
	}
	return true
}

// Guard puts idempotency in front of a service's POST routes (Handle).
type Guard struct {
	// Cache is the Redis fast path; nil goes straight to the route.
	Cache   *Cache
	Metrics *Metrics
	Log     *slog.Logger
	// LockTTL is how long the fast path's in-flight lock lasts: as long
	// as a request can act. Were its release lost (a Redis blip), it
	// would keep refusing the key as in flight no longer than that.
	LockTTL time.Duration
}

// Route describes one idempotent POST route of body type T.
type Route[T any] struct {
	// Pattern names the route in fingerprints (/v1/orders), so that
	// equivalent spellings of a path do not differ.
	Pattern string
	// Validate checks the decoded body's meaning (and may normalise it);
	// its error is answered by Fail, before the key is looked at, so a
	// bad request is refused as bad whatever its key holds.
	Validate func(*T) error
	// Do does the route's work for req, claiming its key explicitly (see
	// Keys.Claim), and returns the answer. A Final answer is cached for
	// replays. ErrInFlight and ErrKeyReused are answered here; any other
	// error by Fail.
	Do func(ctx context.Context, req Request, body *T) (Response, error)
	// Fail answers the errors of Validate and Do.
	Fail func(w http.ResponseWriter, r *http.Request, err error)
}

// Handle returns the handler of route. For each request it:
//
//  1. refuses a body that is not JSON (415), a missing or malformed
//     Idempotency-Key (400), a body too large (413) or malformed (400),
//     decoding it once; and one that Validate refuses;
//  2. asks the fast path: a response stored for the key is replayed byte
//     for byte with Idempotent-Replayed: true, or refused (422) if stored
//     for another request; a key locked by a request in flight is refused
//     (409, Retry-After);
//  3. calls Do, writes its answer, and in one more round trip caches a
//     final answer and releases the lock.
//
// A Redis failure skips the fast path: Do runs, and Postgres decides.
func Handle[T any](g *Guard, route Route[T]) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if rerr := web.RequireJSON(r); rerr != nil {
			rerr.Write(w, r)
			return
		}
		key := r.Header.Get("Idempotency-Key")
		if !ValidKey(key) {
			detail := "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces."
			if key == "" {
				detail = "The Idempotency-Key header is required: send a unique value per request, and the same value when you retry it."
			}
			web.WriteProblem(w, r, InvalidKey, detail)
			return
		}
		raw, rerr := web.ReadBody(w, r)
		if rerr != nil {
			rerr.Write(w, r)
			return
		}
		var body T
		canonical, rerr := web.DecodeStrict(raw, &body)
		if rerr != nil {
			rerr.Write(w, r)
			return
		}
		if err := route.Validate(&body); err != nil {
			route.Fail(w, r, err)
			return
		}
		scope := web.ClientID(r.Context())
		req := Request{Scope: scope, Key: key, Fingerprint: Fingerprint(r.Method, routeOf(r, route.Pattern), scope, canonical)}

		var lock string
		if g.Cache != nil {
			stored, token, err := g.Cache.Begin(r.Context(), req, g.LockTTL)
			switch {
			case errors.Is(err, ErrKeyReused):
				g.Metrics.Observe(OutcomeMismatch)
				writeKeyReused(w, r)
				return
			case errors.Is(err, ErrInFlight):
				g.Metrics.Observe(OutcomeInFlight)
				writeInFlight(w, r)
				return
			case err != nil:
				g.degraded(r.Context(), "begin", err)
			case stored != nil:
				g.Metrics.Observe(OutcomeReplay)
				WriteResponse(w, *stored)
				return
			}
			lock = token
		}

		resp, err := route.Do(r.Context(), req, &body)
		switch {
		case errors.Is(err, ErrInFlight):
			writeInFlight(w, r)
		case errors.Is(err, ErrKeyReused):
			writeKeyReused(w, r)
		case err != nil:
			route.Fail(w, r, err)
		default:
			WriteResponse(w, resp)
		}

		if g.Cache == nil || lock == "" && (err != nil || !resp.Final) {
			return
		}
		var final *Response
		if err == nil && resp.Final {
			final = &resp
		}
		// Detached: the client may be gone; the lock must still go.
		if err := g.Cache.Finish(context.WithoutCancel(r.Context()), req, lock, final); err != nil {
			g.degraded(r.Context(), "finish", err)
		}
	}
}

// routeOf names the request's route for its fingerprint: the pattern, and
// the values of its path parameters, so that the same key and body sent
// for two resources (the returns of two orders) do not share a fingerprint.
func routeOf(r *http.Request, pattern string) string {
	rctx := chi.RouteContext(r.Context())
	if rctx == nil {
		return pattern
	}
	for i, k := range rctx.URLParams.Keys {
		if k != "*" {
			pattern += "\x00" + k + "=" + rctx.URLParams.Values[i]
		}
	}
	return pattern
}

func (g *Guard) degraded(ctx context.Context, op string, err error) {
	g.Metrics.cacheErrors.Inc()
	if !errors.Is(err, resilience.ErrBreakerOpen) { // logged once, when it opened
		g.Log.WarnContext(ctx, "idempotency fast path unavailable; using Postgres", "op", op, "err", err)
	}
}

// WriteResponse writes resp: its headers, Content-Length, Idempotent-Replayed when
// it is a replay, its status and body.
func WriteResponse(w http.ResponseWriter, resp Response) {
	h := w.Header()
	for name, values := range resp.Header {
		h[name] = values
	}
	if resp.Replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// writeKeyReused refuses a key used before for a different request.
func writeKeyReused(w http.ResponseWriter, r *http.Request) {
	web.WriteProblem(w, r, KeyReused, "This Idempotency-Key was already used for a different request. Use a new key for a new request.")
}

// writeInFlight refuses a key whose first request is still running.
func writeInFlight(w http.ResponseWriter, r *http.Request) {
	web.WriteProblemRetry(w, r, InFlight, "A request with this Idempotency-Key is still being processed. Retry later with the same key.", time.Second)
}
