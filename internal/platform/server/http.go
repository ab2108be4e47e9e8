package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/resiliencekit/payservice/internal/platform/config"
)

// NewAdminHandler returns the admin endpoints: /metrics, /debug/pprof/,
// and /health/ready served by ready when it is not nil (a readiness with
// the details the public one leaves out).
func NewAdminHandler(gatherer prometheus.Gatherer, ready http.HandlerFunc) http.Handler {
	mux := http.NewServeMux()
	if ready != nil {
		mux.HandleFunc("GET /health/ready", ready)
	}
	// OpenMetrics, to a scraper that asks for it, shows exemplars: a
	// latency bucket's last traced request.
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	// Registered by hand on our own mux: importing net/http/pprof also
	// registers on http.DefaultServeMux, which nothing here serves.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// HTTPConfig bounds every phase of an HTTP exchange. A server without
// these is one slow client away from running out of connections.
type HTTPConfig struct {
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
}

// MaxHeaderBytes bounds a request's line and headers: ample for any API
// client, where net/http's 1 MiB default invites abuse. net/http answers a
// request over it (plus its own 4 KiB of slack) with a plain-text 431, and
// a malformed request line with a plain-text 400, before any handler runs:
// there is no request yet to give an id or a problem+json body to.
const MaxHeaderBytes = 64 << 10

// NewHTTP returns an http.Server for h. Requests' contexts derive from
// base, which must not be cancelled by a shutdown signal: in-flight requests
// are finished by http.Server.Shutdown, not cut off.
func NewHTTP(h http.Handler, cfg HTTPConfig, base context.Context, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		BaseContext:       func(_ net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// Bind declares the variables HTTP_READ_HEADER_TIMEOUT,
// HTTP_READ_TIMEOUT, HTTP_WRITE_TIMEOUT and HTTP_IDLE_TIMEOUT (after b's
// prefix).
func (c *HTTPConfig) Bind(b *config.Binder) {
	b = b.Prefix("HTTP_")
	b.Duration("READ_HEADER_TIMEOUT", &c.ReadHeaderTimeout, "time to read request headers (slowloris guard)")
	b.Duration("READ_TIMEOUT", &c.ReadTimeout, "time to read a whole request")
	b.Duration("WRITE_TIMEOUT", &c.WriteTimeout, "time to write a response; must exceed the time a request may take")
	b.Duration("IDLE_TIMEOUT", &c.IdleTimeout, "keep-alive idle time; above the load balancer's, so it closes first")
}

// DefaultHTTPConfig bounds an API whose requests take up to about ten
// seconds.
func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 15 * time.Second, IdleTimeout: 120 * time.Second}
}

// ShutdownConfig bounds a graceful shutdown (see Run).
type ShutdownConfig struct {
	Drain   time.Duration
	Timeout time.Duration
}

// Bind declares SHUTDOWN_DRAIN_DELAY and SHUTDOWN_TIMEOUT (after b's
// prefix).
func (c *ShutdownConfig) Bind(b *config.Binder) {
	b.DurationOrZero("SHUTDOWN_DRAIN_DELAY", &c.Drain, "after SIGTERM, keep serving (not ready) this long so load balancers stop sending")
	b.Duration("SHUTDOWN_TIMEOUT", &c.Timeout, "then wait at most this long for in-flight requests and work")
}
