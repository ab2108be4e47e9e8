package web

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/tracing"
)

type ctxKey int

const (
	requestIDKey ctxKey = iota
	clientIDKey
	accessLogKey
	problemTypesKey
)

// accessLogInfo carries what inner middleware learns about a request back
// out to the access log, which wraps them and only sees its own context.
type accessLogInfo struct{ clientID string }

// RequestID returns the request's id, as X-Request-Id shows it.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// ClientID returns the authenticated client of the request, or "".
func ClientID(ctx context.Context) string {
	id, _ := ctx.Value(clientIDKey).(string)
	return id
}

// requestID gives every request an id, echoing the client's X-Request-Id
// when it is sane, so one id follows a request through every log line.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, id)))
	})
}

// validRequestID accepts up to 128 printable ASCII characters without
// spaces: anything else could forge log lines or bloat them.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// LatencyBuckets are the bounds, in seconds, of the request latency
// histogram. A latency SLO's threshold must be one of them
// (observability/slos.yaml): a rule can count only the requests under a
// bound.
var LatencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// httpMetrics are the RED metrics of the public API.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests served, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "HTTP request latency, by route pattern, method and status code.",
			Buckets: LatencyBuckets,
		}, []string{"route", "method", "code"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

// observe records metrics and an access-log line for every request. It
// labels by chi's route pattern (/v1/orders/{id}), never the raw path,
// so that label cardinality stays bounded whatever clients send.
func observe(log *slog.Logger, m *httpMetrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			info := &accessLogInfo{}
			r = r.WithContext(context.WithValue(r.Context(), accessLogKey, info))
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			defer func() {
				status := ww.Status()
				if status == 0 { // the handler wrote nothing: net/http sends 200
					status = http.StatusOK
				}
				method := r.Method
				if !knownMethod(method) {
					method = "OTHER"
				}
				pattern := ""
				if rc := chi.RouteContext(r.Context()); rc != nil {
					pattern = rc.RoutePattern()
				}
				tracing.Answered(r.Context(), method, pattern, status)
				route := cmp.Or(pattern, "unmatched")
				elapsed := time.Since(start)
				code := strconv.Itoa(status)
				m.requests.WithLabelValues(route, method, code).Inc()
				latency := m.duration.WithLabelValues(route, method, code)
				if traceID, ok := tracing.TraceID(r.Context()); ok {
					// Scraped as OpenMetrics, a bucket shows the trace of
					// a request it counted: from a slow bucket to a slow
					// request.
					latency.(prometheus.ExemplarObserver).ObserveWithExemplar(elapsed.Seconds(), prometheus.Labels{"trace_id": traceID})
				} else {
					latency.Observe(elapsed.Seconds())
				}
				log.LogAttrs(r.Context(), slog.LevelInfo, "http request",
					slog.String("request_id", RequestID(r.Context())),
					slog.String("method", r.Method),
					slog.String("path", r.URL.Path),
					slog.String("route", route),
					slog.Int("status", status),
					slog.Int("bytes", ww.BytesWritten()),
					slog.Duration("duration", elapsed),
					slog.String("client_id", info.clientID),
					slog.String("remote", r.RemoteAddr),
				)
			}()
			next.ServeHTTP(ww, r)
		})
	}
}

func knownMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}

// recoverPanic turns a panic into a logged stack and a problem+json 500,
// instead of a dropped connection. http.ErrAbortHandler is re-panicked:
// it is net/http's way to abort a response on purpose.
func recoverPanic(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				log.ErrorContext(r.Context(), "panic serving request",
					"panic", fmt.Sprint(v), "stack", string(debug.Stack()),
					"request_id", RequestID(r.Context()), "method", r.Method, "path", r.URL.Path)
				WriteProblem(w, r, Internal, "The server failed unexpectedly; quote the request id when reporting it.")
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// Authenticator checks bearer API keys.
type Authenticator struct {
	realm string // named in WWW-Authenticate
	// Keys are stored as SHA-256 digests so that every comparison is of
	// equal-length values: constant time regardless of the key presented.
	digests   [][sha256.Size]byte
	clientIDs []string
}

// NewAuthenticator accepts the given secrets, keyed by client id, for the
// named realm.
func NewAuthenticator(realm string, secretsByClient map[string]string) *Authenticator {
	a := &Authenticator{realm: realm}
	for client, secret := range secretsByClient {
		a.digests = append(a.digests, sha256.Sum256([]byte(secret)))
		a.clientIDs = append(a.clientIDs, client)
	}
	return a
}

// clientFor returns the client owning the key, comparing against every
// configured key so that the time taken does not reveal which one matched.
func (a *Authenticator) clientFor(key string) (string, bool) {
	presented := sha256.Sum256([]byte(key))
	match := -1
	for i, d := range a.digests {
		if subtle.ConstantTimeCompare(presented[:], d[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", false
	}
	return a.clientIDs[match], true
}

// identify puts the client owning the request's bearer key in its
// context, if the key is valid. It rejects nothing: the rate limiter comes
// next and must see unauthenticated requests too, and requireClient then
// turns them away.
func (a *Authenticator) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if client, ok := a.clientFor(strings.TrimSpace(key)); ok {
				r = r.WithContext(context.WithValue(r.Context(), clientIDKey, client))
				if info, ok := r.Context().Value(accessLogKey).(*accessLogInfo); ok {
					info.clientID = client
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// require answers 401 to requests identify found no client for.
func (a *Authenticator) require(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ClientID(r.Context()) != "" {
			next.ServeHTTP(w, r)
			return
		}
		scheme, key, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || key == "" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q`, a.realm))
			WriteProblem(w, r, Unauthorized, "Send your API key as Authorization: Bearer <key>.")
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q, error="invalid_token"`, a.realm))
		WriteProblem(w, r, Unauthorized, "The API key is not valid.")
	})
}

// RateLimiter decides whether a key may make a request now.
type RateLimiter interface {
	Allow(key string) resilience.Decision
}

// rateLimit gives each authenticated client its own budget of requests,
// and each remote address (for IPv6, each /64: see anonymousKey) failing
// authentication another, smaller one, so that neither a noisy client nor
// a credential-guessing script can starve the others. It never waits:
// over the limit is a 429 with the time to come back; every answer carries
// the RateLimit-* headers so well-behaved clients can pace themselves
// before that.
//
// The remote address is the connection's. Behind a load balancer that is
// the balancer's: key on a trusted X-Forwarded-For hop instead.
func rateLimit(clients, anonymous RateLimiter) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var d resilience.Decision
			if client := ClientID(r.Context()); client != "" {
				d = clients.Allow(client)
			} else {
				d = anonymous.Allow(anonymousKey(r.RemoteAddr))
			}
			d.SetHeaders(w.Header())
			if !d.Allowed {
				WriteProblem(w, r, RateLimited, fmt.Sprintf("Rate limit exceeded; retry in %s.", d.RetryAfter.Round(time.Millisecond)))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// anonymousKey is what an unauthenticated request is limited by: its
// remote IPv4 address, or the /64 network of an IPv6 one. A /64 is the
// smallest IPv6 subnet handed out, and a host on it may pick new addresses
// in it at will (temporary addresses, RFC 8981): keyed per address, one
// client could rotate through 2^64 fresh budgets. The trade-off is that
// the hosts of one /64 share a budget, as those behind one NAT do in
// IPv4. IPv4-mapped IPv6 addresses are keyed as the IPv4 address.
func anonymousKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String()
	}
	prefix, _ := addr.WithZone("").Prefix(64) // cannot fail: 64 bits of 128
	return prefix.String()
}

// deadline bounds every API request. Handlers and everything below them
// honour the context, so a request that cannot finish in time gives up and
// answers instead of holding a connection and a worker.
func deadline(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// requireReady answers 503 until ready says yes (the schema is migrated),
// instead of letting requests fail on missing tables while a replica
// starts.
func requireReady(ready func() bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !ready() {
				WriteProblemRetry(w, r, Unavailable, "The service is starting: its database schema is not ready yet.", time.Second)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
