// Package health answers the liveness and readiness probes of a service.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Check probes one dependency for readiness.
type Check struct {
	Name  string
	Probe func(ctx context.Context) error
	// Optional marks a dependency the service can serve without: when it
	// fails, it is reported as "degraded: …" and the replica stays ready.
	// Failing readiness on such a dependency would take every replica out
	// of the load balancer at once, for an outage the service could ride.
	Optional bool
	// Detail, if set, says more about the dependency for operators (which
	// server takes writes, say). Only ReadyDetailed shows it: it may name
	// addresses, which the public readiness body never does.
	Detail func() string
}

// Health answers the liveness and readiness probes.
//
// Liveness says only that the process can serve HTTP: it never looks at
// dependencies, or a database blip would make the orchestrator restart
// every replica at once. Readiness says whether this replica should get
// traffic: migrations applied, required dependencies answering, and not
// shutting down.
//
// The readiness body is public, so a failed check shows only a coarse
// reason ("unavailable: unreachable"); the error itself, with its
// addresses and driver messages, goes to the log, once each time a check
// changes from passing to failing or back, not on every probe.
//
// Being public, readiness must also be cheap: the checks' results are
// reused for checkFreshness, and callers arriving while the checks run
// wait for them rather than start their own, so a flood of probes costs
// the dependencies one round of checks a second. Whether the replica is
// migrated or shutting down is read afresh on every probe.
type Health struct {
	checks       []Check
	timeout      time.Duration
	log          *slog.Logger
	migrated     atomic.Bool
	shuttingDown atomic.Bool

	mu      sync.Mutex
	last    map[string]string // each check's last error text; "" when it passed
	results []error           // of the last round of checks
	ranAt   time.Time         // when that round ended
	running chan struct{}     // closed when the round in progress ends; nil if none
	now     func() time.Time
	joined  func() // test hook: a caller waits for the round in progress

	// The last report's verdict, once there has been one (under mu).
	reported, wasReady bool

	// Metrics, kept whether or not Register exports them.
	ready   prometheus.GaugeFunc
	changes prometheus.Counter
	up      *prometheus.GaugeVec // by check
}

// checkFreshness is how long a round of checks answers readiness probes.
// Well below any orchestrator's probe period, so a probe still sees a
// dependency fail within a second.
const checkFreshness = time.Second

// New returns a Health running checks, each bounded by timeout.
func New(timeout time.Duration, log *slog.Logger, checks ...Check) *Health {
	h := &Health{checks: checks, timeout: timeout, log: log, last: make(map[string]string, len(checks)),
		now: time.Now, joined: func() {}}
	h.ready = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "health_ready",
		Help: "1 while the last readiness report said ready and the service is not shutting down.",
	}, func() float64 {
		h.mu.Lock()
		defer h.mu.Unlock()
		// Shutting down counts at once, not from the next report: the
		// last probe may have come already.
		if h.wasReady && !h.shuttingDown.Load() {
			return 1
		}
		return 0
	})
	h.changes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "health_ready_changes_total",
		Help: "Times a readiness report's verdict differed from the previous report's.",
	})
	h.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "health_check_up",
		Help: "1 if the readiness check passed in its last round, optional checks included; 0 if it failed or has not run yet.",
	}, []string{"check"})
	for _, c := range checks {
		h.up.WithLabelValues(c.Name)
	}
	return h
}

// Register exports the readiness verdict, its changes, and each check's
// last result to reg, as health_ready, health_ready_changes_total and
// health_check_up{check}.
func (h *Health) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{h.ready, h.changes, h.up} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("health metrics: %w", err)
		}
	}
	return nil
}

// SetMigrated records that the schema is at the version this binary needs.
func (h *Health) SetMigrated() { h.migrated.Store(true) }

// Migrated reports whether SetMigrated was called.
func (h *Health) Migrated() bool { return h.migrated.Load() }

// SetShuttingDown turns readiness off for good: the first step of a
// graceful shutdown, so load balancers stop sending new requests.
func (h *Health) SetShuttingDown() { h.shuttingDown.Store(true) }

type healthBody struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	// Reason is set only while shutting down, when every check may be
	// fine and the replica is still not ready.
	Reason string `json:"reason,omitempty"`
	// Details are the checks' details, by check, in ReadyDetailed only.
	Details map[string]string `json:"details,omitempty"`
}

// Live serves the liveness probe.
func (h *Health) Live(w http.ResponseWriter, r *http.Request) {
	web.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// Ready serves the readiness probe.
func (h *Health) Ready(w http.ResponseWriter, r *http.Request) {
	ready, body := h.report(r.Context())
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	web.WriteJSON(w, status, body)
}

// ReadyDetailed serves the readiness probe with each check's details
// added, for the private admin port: the same verdict and status code as
// Ready.
func (h *Health) ReadyDetailed(w http.ResponseWriter, r *http.Request) {
	ready, body := h.report(r.Context())
	for _, c := range h.checks {
		if c.Detail == nil {
			continue
		}
		if d := c.Detail(); d != "" {
			if body.Details == nil {
				body.Details = map[string]string{}
			}
			body.Details[c.Name] = d
		}
	}
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	web.WriteJSON(w, status, body)
}

// report runs every check, concurrently, and says whether the replica is
// ready.
func (h *Health) report(ctx context.Context) (bool, healthBody) {
	body := healthBody{Status: "ok", Checks: make(map[string]string, len(h.checks)+1)}
	ready := true

	body.Checks["migrations"] = "ok"
	if !h.migrated.Load() {
		body.Checks["migrations"] = "pending"
		ready = false
	}

	results, err := h.check(ctx)
	if err != nil { // the caller gave up waiting
		results = make([]error, len(h.checks))
		for i := range results {
			results[i] = err
		}
	}
	for i, c := range h.checks {
		err := results[i]
		switch {
		case err == nil:
			body.Checks[c.Name] = "ok"
		case c.Optional:
			body.Checks[c.Name] = "degraded: " + reason(err)
		default:
			body.Checks[c.Name] = "unavailable: " + reason(err)
			ready = false
		}
	}

	if h.shuttingDown.Load() {
		body.Reason = "shutting down"
		ready = false
	}
	if !ready {
		body.Status = "unavailable"
	}
	h.record(ready)
	return ready, body
}

// record keeps ready as the last report's verdict, counting a change.
func (h *Health) record(ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reported && ready != h.wasReady {
		h.changes.Inc()
	}
	h.reported, h.wasReady = true, ready
}

// check returns the checks' latest results: those of a round that ended
// less than checkFreshness ago, or of the round in progress, or of a new
// round. It fails only if ctx ends while waiting for another caller's
// round.
func (h *Health) check(ctx context.Context) ([]error, error) {
	h.mu.Lock()
	if h.results != nil && h.now().Sub(h.ranAt) < checkFreshness {
		defer h.mu.Unlock()
		return h.results, nil
	}
	if running := h.running; running != nil {
		h.mu.Unlock()
		h.joined()
		select {
		case <-running:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.results, nil
	}
	done := make(chan struct{})
	h.running = done
	h.mu.Unlock()

	// The round serves every caller waiting for it, so the first caller
	// leaving must not cut it short: it is bounded by h.timeout alone.
	ctx = context.WithoutCancel(ctx)
	results := make([]error, len(h.checks))
	var wg sync.WaitGroup
	for i, c := range h.checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, h.timeout)
			defer cancel()
			results[i] = c.Probe(ctx)
		})
	}
	wg.Wait()
	for i, c := range h.checks {
		h.logChange(c, results[i])
		up := 0.0
		if results[i] == nil {
			up = 1
		}
		h.up.WithLabelValues(c.Name).Set(up)
	}

	h.mu.Lock()
	h.results, h.ranAt, h.running = results, h.now(), nil
	h.mu.Unlock()
	close(done)
	return results, nil
}

// logChange logs a check's error when it starts failing or fails
// differently, and its recovery.
func (h *Health) logChange(c Check, err error) {
	text := ""
	if err != nil {
		text = err.Error()
	}
	h.mu.Lock()
	prev := h.last[c.Name]
	h.last[c.Name] = text
	h.mu.Unlock()
	switch {
	case text == prev:
	case err == nil:
		h.log.Info("readiness check passes again", "check", c.Name)
	default:
		h.log.Warn("readiness check failing", "check", c.Name, "optional", c.Optional, "err", err)
	}
}

// reason says why a check failed without the details of the error.
func reason(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.As(err, &netErr):
		return "unreachable"
	}
	return "failing"
}
