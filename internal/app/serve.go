// Package app is payservice's wiring: its configuration (which
// component reads which variables) and the composition of the platform's
// parts with the payments domain. It is the one place that knows both;
// replacing the example domain means replacing its part here.
package app

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/resiliencekit/payservice/api"
	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/paymentsapi"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/health"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/readinessgate"
	"github.com/resiliencekit/payservice/internal/platform/redisclient"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/server"
	"github.com/resiliencekit/payservice/internal/platform/tracing"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Name names the service where a name is needed: its metrics' namespace,
// its authentication realm, its Redis keys.
const Name = "payservice"

// Description is the one line `server -h` says the service is.
const Description = "a payment API that shows resilience patterns in running code"

// problemTypes prefixes the type URI of every problem the API answers
// with. The .example domain is reserved (RFC 2606): point it at your API's
// documentation when you adopt the template.
const problemTypes = "https://payservice.example/problems/"

// withdrawTimeout bounds withdrawing the readiness gate at SIGTERM: the
// drain delay runs in the pod's grace period, and an API server that does
// not answer must not eat it.
const withdrawTimeout = time.Second

// migrations are the schema's streams, in the order they apply: the key
// records before the domain whose work they guard.
var migrations = []postgres.Migrations{idempotency.Migrations, paymentsdb.Migrations}

// Serve runs the service until ctx is cancelled, then shuts down
// gracefully (server.Run says how, and within what bounds). Each step
// builds one part from the configuration and the parts before it.
func Serve(ctx context.Context, getenv func(string) string, stdout io.Writer, version string) error {
	return ServeExporting(ctx, getenv, stdout, version, nil)
}

// ServeExporting is Serve, its spans exported to export, when it is not
// nil and OTEL_* turns tracing on, rather than to the configured
// collector: tests keep them in memory (see internal/app/servetest).
func ServeExporting(ctx context.Context, getenv func(string) string, stdout io.Writer, version string, export sdktrace.SpanExporter) error {
	cfg, deprecated, err := Load(getenv)
	if err != nil {
		return err
	}
	log := NewLogger(cfg, stdout)
	log.Info("starting "+Name, "version", version, "tracing", cfg.Tracing.Describe(), "config", cfg)
	for _, w := range deprecated {
		log.Warn(w)
	}
	// Nil, and every part below untraced, unless configured.
	traces := tracing.New(cfg.Tracing, version, export, log)
	// The shutdown exports what is left (Finish, below); this is for a
	// return before it, and then does nothing.
	defer func() { _ = traces.Shutdown(context.Background()) }()

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// The platform's and the domain's metrics share one namespace:
	// payservice_breaker_state, payservice_http_requests_total, ...
	reg := prometheus.WrapRegistererWithPrefix(Name+"_", registry)

	primary, replica, err := postgres.OpenPools(cfg.Postgres, traces.Provider(), registry)
	if err != nil {
		return err
	}
	// Runs last. It waits for no connection still in use by work abandoned
	// at SHUTDOWN_TIMEOUT: database/sql closes each one when it is released.
	defer closePools(log, primary, replica)

	// Which server takes writes, how far the replica lags, and so where
	// a read that may be stale goes; measured until the signal (reads
	// during the drain then go to the primary, which is never stale).
	topology, err := postgres.NewTopology(primary, replica, cfg.Postgres.ReplicaMaxLag, reg, log)
	if err != nil {
		return err
	}

	redisclient.UseLogger(log) // go-redis's own lines, structured too
	rdb, err := redisclient.New(cfg.Redis)
	if err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	defer rdb.Close()
	redisclient.Trace(rdb, traces.Provider())
	if err := reg.Register(redisclient.NewPoolCollector(rdb)); err != nil {
		return fmt.Errorf("redis pool metrics: %w", err)
	}
	redisBreaker, err := resilience.NewBreaker(withName(cfg.Redis.Breaker, "redis"), idempotency.RedisOutcome, reg, log)
	if err != nil {
		return err
	}
	idemMetrics, err := idempotency.NewMetrics(reg)
	if err != nil {
		return err
	}
	keys := &idempotency.Keys{Lease: cfg.Idempotency.Lease, Metrics: idemMetrics}
	guard := &idempotency.Guard{
		Cache: idempotency.NewCache(rdb, idempotency.CacheSettings{
			Prefix: Name + ":idem", ResponseTTL: cfg.Idempotency.ResponseTTL, Timeout: cfg.Redis.Timeout,
		}, redisBreaker),
		Metrics: idemMetrics,
		Log:     log,
		// The in-flight lock needs to last only as long as a request can
		// act: were its release lost (a Redis blip), it would answer 409
		// for no longer than that.
		LockTTL: cfg.RequestTimeout + cfg.Idempotency.SettleTimeout,
	}

	charges, protections, err := provider.New(cfg.Provider, traces.Provider(), reg, log)
	if err != nil {
		return err
	}
	svc := payments.NewService(payments.Config{
		Store:         paymentsdb.New(primary, topology, keys),
		Provider:      charges,
		Views:         paymentsapi.Views{ProblemTypes: problemTypes},
		Lease:         cfg.Idempotency.Lease,
		SettleTimeout: cfg.Idempotency.SettleTimeout,
		Log:           log,
	})
	reconcile := cfg.Reconciler
	reconcile.Timeout = cfg.RequestTimeout // a payment's reconciliation is bounded like a request
	reconciler, err := payments.NewReconciler(svc, reconcile, reg)
	if err != nil {
		return err
	}

	clientLimit, err := resilience.NewKeyedLimiter(cfg.ClientLimit, reg)
	if err != nil {
		return err
	}
	anonymousLimit, err := resilience.NewKeyedLimiter(cfg.AnonymousLimit, reg)
	if err != nil {
		return err
	}
	probes := health.New(time.Second, log,
		health.Check{Name: "postgres", Probe: primary.PingContext, Detail: func() string {
			w, seen := topology.Writer()
			if w == "" {
				return ""
			}
			return fmt.Sprintf("writes on %s, seen %v ago", w, time.Since(seen).Round(time.Millisecond))
		}},
		// Optional: payments are served correctly through Postgres alone
		// while Redis is down, so an outage shows as "degraded" and the
		// replica stays ready. Failing readiness here would take every
		// replica out of the load balancer at once.
		health.Check{Name: "redis", Optional: true, Probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
	)
	if err := probes.Register(reg); err != nil {
		return err
	}
	// Off (nil) unless configured: the pod is then Ready on its probes
	// alone.
	var gate *readinessgate.Gate
	if cfg.ReadinessGate.Condition != "" {
		kube, err := readinessgate.InCluster(getenv)
		if err != nil {
			return fmt.Errorf("READINESS_GATE_CONDITION=%s: %w", cfg.ReadinessGate.Condition, err)
		}
		gate = readinessgate.New(cfg.ReadinessGate, kube, Name, log)
	}
	handler := web.NewRouter(web.RouterConfig{
		Auth:           web.NewAuthenticator(Name, cfg.APIKeys.Secrets()),
		ClientLimit:    clientLimit,
		AnonymousLimit: anonymousLimit,
		Ready:          probes.Migrated,
		Live:           probes.Live,
		ReadyProbe:     probes.Ready,
		Log:            log,
		Metrics:        reg,
		RequestTimeout: cfg.RequestTimeout,
		ProblemTypes:   problemTypes,
		OpenAPI:        api.Spec,
		Tracer:         traces.Provider(),
	}, paymentsapi.Routes(paymentsapi.Config{Service: svc, Guard: guard, Log: log}))

	// Bind before serving: a port conflict fails start-up with a clear
	// error, and tests can ask for port 0 and read the port from the log.
	var lc net.ListenConfig
	apiLn, err := lc.Listen(ctx, "tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	adminLn, err := lc.Listen(ctx, "tcp", cfg.AdminAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("listen on ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	// Requests' contexts keep ctx's values but not its cancellation: the
	// signal starts the shutdown, it does not abort work in flight.
	base := context.WithoutCancel(ctx)
	migrated := make(chan struct{}) // closed once the schema is current
	return server.Run(ctx, server.Service{
		Public: []server.Listener{{Name: "api", Server: server.NewHTTP(handler, cfg.HTTP, base, log), Listener: apiLn}},
		Admin:  server.Listener{Name: "admin", Server: server.NewHTTP(server.NewAdminHandler(registry, probes.ReadyDetailed), cfg.HTTP, base, log), Listener: adminLn},
		Tasks: []func(context.Context) error{func(ctx context.Context) error {
			topology.Run(ctx)
			return nil
		}, func(ctx context.Context) error {
			if err := postgres.PrepareSchema(ctx, primary, cfg.Postgres.MigrateOnStart, log, migrations...); err != nil {
				return err
			}
			probes.SetMigrated()
			close(migrated)
			log.Info("ready: schema is current")
			// Settles payments left processing, while this replica leads.
			reconciler.Run(ctx)
			return nil
		}, func(ctx context.Context) error {
			// A task of its own: an API server refusing the gate (a Role
			// not bound yet) holds up the gate, never the reconciler.
			select {
			case <-migrated:
				_ = gate.Declare(ctx) // fails only as ctx ends; it logs why it has not set the gate
			case <-ctx.Done():
			}
			return nil
		}},
		Draining: func() {
			probes.SetShuttingDown()
			// ctx has ended: the withdrawal gets a deadline of its own.
			wctx, cancel := context.WithTimeout(base, withdrawTimeout)
			defer cancel()
			if err := gate.Withdraw(wctx); err != nil {
				log.Warn("readiness gate not withdrawn; the readiness probe takes the pod out instead", "err", err)
			}
		},
		Finish: []func(context.Context) error{func(ctx context.Context) error {
			// Provider calls already accepted finish (their contexts are
			// not the signal's); nothing new is accepted.
			if err := protections.Bulkhead.Close(ctx); err != nil {
				inFlight, queued := protections.Bulkhead.Stats()
				return fmt.Errorf("provider calls abandoned (%d in flight, %d queued); their payments stay processing for a retry or the reconciler: %w", inFlight, queued, err)
			}
			return nil
		}, traces.Shutdown}, // last: it exports the spans of the work above
		Drain:   cfg.Shutdown.Drain,
		Timeout: cfg.Shutdown.Timeout,
		Log:     log,
	})
}

func withName(s resilience.BreakerSettings, name string) resilience.BreakerSettings {
	s.Name = name
	return s
}

func closePools(log *slog.Logger, pools ...*sql.DB) {
	for _, p := range pools {
		if p == nil {
			continue
		}
		if err := p.Close(); err != nil {
			log.Warn("close database pool", "err", err)
		}
	}
}

// NewLogger returns the service's logger, as configured. Traced, a line
// logged with a request's context names its trace (trace_id, span_id).
func NewLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	if cfg.Tracing.Enabled() {
		h = tracing.LogHandler(h)
	}
	return slog.New(h)
}
