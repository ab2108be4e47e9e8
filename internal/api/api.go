// Package api is payservice's HTTP layer: the chi router and its middleware,
// the payment handlers, problem+json errors, health probes, and the admin
// mux with metrics and pprof.
//
// Handlers are thin: they decode and check the request (decode.go), call the
// payments service, and render the outcome (problem.go for every error). The
// middleware order is deliberate and listed once, in NewHandler. The admin
// endpoints live on a separate handler and port so that profiling and
// metrics are never reachable through the public load balancer.
package api

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/resilience"
)

// Deps is what the public API needs.
type Deps struct {
	Payments       PaymentService
	Auth           *Authenticator
	ClientLimit    RateLimiter // per authenticated client
	AnonymousLimit RateLimiter // per remote address, for requests failing authentication
	Health         *Health
	Log            *slog.Logger
	Metrics        prometheus.Registerer
	RequestTimeout time.Duration

	// The Redis fast path of idempotency. Without a store, every request
	// goes to the payments service, whose Postgres claim is the truth.
	IdempotencyStore   *resilience.IdempotencyStore
	IdempotencyMetrics *resilience.IdempotencyMetrics
	IdempotencyLockTTL time.Duration
}

// NewHandler returns the public API.
func NewHandler(d Deps) http.Handler {
	r := chi.NewRouter()
	// Outermost first. Every response gets a request id; every request is
	// counted and logged, including those that panic (recoverPanic sits
	// inside observe, so the 500 it writes is what gets recorded).
	r.Use(requestID, observe(d.Log, newHTTPMetrics(d.Metrics)), recoverPanic(d.Log))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, probNotFound, "No such route.")
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
		writeProblem(w, req, probMethodNotAllowed, req.Method+" is not allowed on this route.")
	})

	r.Get("/health/live", d.Health.live)
	r.Get("/health/ready", d.Health.ready)

	r.Route("/v1", func(r chi.Router) {
		// Identify, limit, then require: failed authentication is rate
		// limited too. Nothing below, not even the readiness gate, is
		// visible to an anonymous caller.
		r.Use(d.Auth.identify, rateLimit(d.ClientLimit, d.AnonymousLimit), requireClient,
			requireReady(d.Health), deadline(d.RequestTimeout))
		h := &paymentHandlers{svc: d.Payments, log: d.Log}
		r.Post("/payments", idempotent(d, h.create))
		r.Get("/payments", h.list)
		r.Get("/payments/{id}", h.get)
	})
	return r
}

// idempotent puts the Redis fast path in front of create, for requests
// whose media type is right (the others get create's 415, never a replay).
func idempotent(d Deps, create http.HandlerFunc) http.HandlerFunc {
	if d.IdempotencyStore == nil {
		return create
	}
	guarded := resilience.NewIdempotency(resilience.IdempotencyConfig{
		Store:    d.IdempotencyStore,
		Metrics:  d.IdempotencyMetrics,
		Log:      d.Log,
		Lease:    d.IdempotencyLockTTL,
		MaxBody:  maxBodyBytes,
		Scope:    func(r *http.Request) string { return ClientIDFrom(r.Context()) },
		Route:    paymentsRoute,
		ValidKey: payments.ValidIdempotencyKey,
		Valid:    validPaymentRequest,
		// Charged or declined: the outcomes stored and replayed.
		Final:    func(status int) bool { return status == http.StatusCreated || status == http.StatusPaymentRequired },
		InFlight: writeInFlight,
		Mismatch: writeKeyReused,
	}).Middleware(create)
	return func(w http.ResponseWriter, r *http.Request) {
		if requireJSON(r) != nil {
			create(w, r)
			return
		}
		guarded.ServeHTTP(w, r)
	}
}

// NewAdminHandler returns the admin endpoints: /metrics and /debug/pprof/.
// Serve it on its own port, never the public one.
func NewAdminHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	// Registered by hand on our own mux: importing net/http/pprof also
	// registers on http.DefaultServeMux, which nothing here serves.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ServerConfig bounds every phase of an HTTP exchange. A server without
// these is one slow client away from running out of connections.
type ServerConfig struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
}

// NewServer returns an http.Server for h. Requests' contexts derive from
// base, which must not be cancelled by a shutdown signal: in-flight requests
// are finished by http.Server.Shutdown, not cut off.
func NewServer(h http.Handler, cfg ServerConfig, base context.Context, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10, // ample for our headers; the 1 MiB default invites abuse
		BaseContext:       func(_ net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
