// Package web is the platform's HTTP layer: the router with its middleware
// in one deliberate order, problem+json errors, strict request decoding,
// authentication and per-client rate limits.
//
// It knows nothing of any domain: a domain mounts its routes under /v1
// (NewRouter's routes function) and gets, for each of them, a request id,
// metrics and an access log, panic recovery, authentication, rate limits, a
// 503 until the schema is migrated, and a deadline. Handlers stay thin:
// they decode with DecodeStrict, call their service, and answer with
// WriteJSON or a problem.
package web

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/tracing"
)

// RouterConfig is what the router needs besides the domain's routes.
type RouterConfig struct {
	Auth           *Authenticator
	ClientLimit    RateLimiter // per authenticated client
	AnonymousLimit RateLimiter // per remote address, for requests failing authentication
	// Ready reports whether requests may be served (the schema is
	// migrated); until then they get 503.
	Ready func() bool
	// Live and ReadyProbe serve /health/live and /health/ready.
	Live, ReadyProbe http.HandlerFunc
	Log              *slog.Logger
	Metrics          prometheus.Registerer
	RequestTimeout   time.Duration
	// ProblemTypes prefixes every problem's type URI, e.g.
	// https://api.example.com/problems/.
	ProblemTypes string
	// OpenAPI, when set, is the API's OpenAPI description, served
	// unauthenticated at GET /openapi.yaml.
	OpenAPI []byte
	// Tracer, when set, gives every request but the health probes a
	// server span named after its route ("POST /v1/things"), which the
	// access log and the latency histogram's exemplars name.
	Tracer trace.TracerProvider
}

// NewRouter returns the public API: health probes, the API's description
// (if configured), and the domain's routes mounted under /v1 behind the
// middleware every API route needs.
func NewRouter(c RouterConfig, routes func(r chi.Router)) http.Handler {
	r := chi.NewRouter()
	// Outermost first. Every response gets a request id; every request is
	// counted and logged, including those that panic (recoverPanic sits
	// inside observe, so the 500 it writes is what gets recorded).
	mw := []func(http.Handler) http.Handler{problemTypes(c.ProblemTypes), requestID}
	if c.Tracer != nil {
		// Outside observe, which names the span once routed. Probes are
		// left out: a kubelet's, every few seconds, would bury the rest.
		mw = append(mw, tracing.Middleware(c.Tracer, func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/health/") }))
	}
	r.Use(append(mw, observe(c.Log, newHTTPMetrics(c.Metrics)), recoverPanic(c.Log))...)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		WriteProblem(w, r, NotFound, "No such route.")
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		// RFC 9110 §15.5.6: a 405 lists what the route does allow.
		// chi's own handler would, but a custom one must find out.
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if r.Match(chi.NewRouteContext(), m, req.URL.Path) {
				allowed = append(allowed, m)
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		WriteProblem(w, req, MethodNotAllowed, req.Method+" is not allowed on this route.")
	})

	r.Get("/health/live", c.Live)
	r.Get("/health/ready", c.ReadyProbe)
	if len(c.OpenAPI) > 0 {
		r.Get("/openapi.yaml", serveOpenAPI(c.OpenAPI))
	}

	clients, anonymous := countRejections(c.Metrics, c.Auth, c.ClientLimit, c.AnonymousLimit)
	r.Route("/v1", func(r chi.Router) {
		// Identify, limit, then require: failed authentication is rate
		// limited too. Nothing below, not even the 503 of a replica still
		// migrating, is visible to an anonymous caller.
		r.Use(c.Auth.identify, rateLimit(clients, anonymous), c.Auth.require,
			requireReady(c.Ready), deadline(c.RequestTimeout))
		routes(r)
	})
	return r
}

// countRejections wraps the limiters so that each request they turn away
// counts in http_ratelimited_total{client, limiter}: by the client's id
// for the clients' limiter, whose key it is (the configured API keys bound
// them), and as "anonymous" for the other, whose key is a remote address:
// anyone can vary it, and a label of it would have no bound.
func countRejections(reg prometheus.Registerer, auth *Authenticator, clients, anonymous RateLimiter) (RateLimiter, RateLimiter) {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_ratelimited_total",
		Help: "API requests answered 429, by client (its id, or anonymous) and limiter.",
	}, []string{"client", "limiter"})
	reg.MustRegister(rejected)
	byClient := counted{limiter: clients, rejected: rejected.MustCurryWith(prometheus.Labels{"limiter": "clients"})}
	byAddress := counted{limiter: anonymous, rejected: rejected.MustCurryWith(prometheus.Labels{"limiter": "anonymous"}), client: "anonymous"}
	// Every series from the start, so that the first rejection is an
	// increase too.
	for _, id := range auth.clientIDs {
		byClient.rejected.WithLabelValues(id)
	}
	byAddress.rejected.WithLabelValues(byAddress.client)
	return byClient, byAddress
}

// counted is a RateLimiter counting its rejections, under client or, if
// that is empty, the key.
type counted struct {
	limiter  RateLimiter
	rejected *prometheus.CounterVec // by client
	client   string
}

func (c counted) Allow(key string) resilience.Decision {
	d := c.limiter.Allow(key)
	if !d.Allowed {
		c.rejected.WithLabelValues(cmp.Or(c.client, key)).Inc()
	}
	return d
}

// serveOpenAPI serves the API's description as it was built in.
func serveOpenAPI(spec []byte) http.HandlerFunc {
	length := strconv.Itoa(len(spec))
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Header().Set("Content-Length", length)
		_, _ = w.Write(spec)
	}
}

// problemTypes makes base the prefix of the problem types written for the
// request.
func problemTypes(base string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), problemTypesKey, base)))
		})
	}
}
