package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/paymentsapi"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/health"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/server"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// serve runs the service until ctx is cancelled, then shuts down
// gracefully (server.Run says how, and within what bounds). It is the
// wiring: each step builds one part from the configuration and the parts
// before it.
func serve(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stdout)
	log.Info("starting payservice", "version", version, "config", cfg)

	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// The application's metrics, the platform's and the domain's, share
	// one namespace: payservice_breaker_state, payservice_http_...
	reg := prometheus.WrapRegistererWithPrefix(metricsNamespace+"_", registry)

	primary, replica, err := openPools(cfg, registry)
	if err != nil {
		return err
	}
	// Runs last. It waits for no connection still in use by work abandoned
	// at SHUTDOWN_TIMEOUT: database/sql closes each one when it is released.
	defer closePools(log, primary, replica)

	rdb, err := newRedis(cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()

	providerClient, bulkhead, err := newProvider(cfg, reg, log)
	if err != nil {
		return err
	}
	// Stops the idle workers if start-up fails below. Once serving, the
	// shutdown closes the bulkhead itself, within SHUTDOWN_TIMEOUT: closing
	// it again here would wait, without bound, for the work it abandoned.
	serving := false
	defer func() {
		if !serving {
			bulkhead.Close(context.Background())
		}
	}()
	idemMetrics, err := resilience.NewIdempotencyMetrics(reg)
	if err != nil {
		return err
	}
	idemStore, err := newIdempotencyStore(cfg, rdb, reg, log)
	if err != nil {
		return err
	}
	svc := payments.NewService(payments.Config{
		Repo:          paymentsdb.NewPayments(primary, replica),
		Provider:      providerClient,
		Render:        paymentsapi.Renderer(problemTypes),
		Lease:         cfg.IdempotencyLease,
		SettleTimeout: cfg.SettleTimeout,
		Metrics:       idemMetrics,
		Log:           log,
	})
	reconciler, err := payments.NewReconciler(svc, payments.ReconcilerConfig{
		Every: cfg.ReconcileInterval, After: cfg.ReconcileAfter, Grace: cfg.ReconcileGrace, Batch: cfg.ReconcileBatch,
		// A payment's reconciliation is bounded like a request.
		Timeout: cfg.RequestTimeout,
	}, reg)
	if err != nil {
		return err
	}
	clientLimit, err := resilience.NewKeyedLimiter("clients", cfg.RateLimitPerSecond, cfg.RateLimitBurst, cfg.RateLimitMaxKeys, reg)
	if err != nil {
		return err
	}
	anonymousLimit, err := resilience.NewKeyedLimiter("anonymous", cfg.RateLimitAnonPerSecond, cfg.RateLimitAnonBurst, cfg.RateLimitMaxKeys, reg)
	if err != nil {
		return err
	}

	probes := health.New(time.Second, log,
		health.Check{Name: "postgres", Probe: primary.PingContext},
		// Optional: payments are served correctly through Postgres alone
		// while Redis is down, so an outage shows as "degraded" and the
		// replica stays ready. Failing readiness here would take every
		// replica out of the load balancer at once.
		health.Check{Name: "redis", Optional: true, Probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
	)
	secrets := make(map[string]string, len(cfg.APIKeys))
	for _, k := range cfg.APIKeys {
		secrets[k.ClientID] = k.Secret
	}
	handler := web.NewRouter(web.RouterConfig{
		Auth:           web.NewAuthenticator(metricsNamespace, secrets),
		ClientLimit:    clientLimit,
		AnonymousLimit: anonymousLimit,
		Ready:          probes.Migrated,
		Live:           probes.Live,
		ReadyProbe:     probes.Ready,
		Log:            log,
		Metrics:        reg,
		RequestTimeout: cfg.RequestTimeout,
		ProblemTypes:   problemTypes,
	}, paymentsapi.Routes(paymentsapi.Config{
		Service:            svc,
		Log:                log,
		ProblemTypes:       problemTypes,
		IdempotencyStore:   idemStore,
		IdempotencyMetrics: idemMetrics,
		// The Redis lock needs to last only as long as a request can act:
		// were its release lost (a Redis blip), it would answer 409 for
		// no longer than that.
		IdempotencyLockTTL: cfg.RequestTimeout + cfg.SettleTimeout,
	}))

	// Bind before serving: a port conflict fails start-up with a clear
	// error, and tests can ask for port 0 and read the port from the log.
	apiLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("listen on ADMIN_ADDR %s: %w", cfg.AdminAddr, err)
	}
	// Requests' contexts keep ctx's values but not its cancellation: the
	// signal starts the shutdown, it does not abort work in flight.
	base := context.WithoutCancel(ctx)
	timeouts := server.HTTPConfig{
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
	}

	serving = true
	return server.Run(ctx, server.Service{
		Public: []server.Listener{{Name: "api", Server: server.NewHTTP(handler, timeouts, base, log), Listener: apiLn}},
		Admin:  server.Listener{Name: "admin", Server: server.NewHTTP(server.NewAdminHandler(registry), timeouts, base, log), Listener: adminLn},
		Tasks: []func(context.Context) error{func(ctx context.Context) error {
			if err := prepareSchema(ctx, cfg, primary, log); err != nil {
				return err
			}
			probes.SetMigrated()
			log.Info("ready: schema is current")
			// Settles payments left processing, while this replica leads.
			reconciler.Run(ctx)
			return nil
		}},
		Draining: probes.SetShuttingDown,
		Finish: []func(context.Context) error{func(ctx context.Context) error {
			// Provider calls already accepted finish (their contexts are
			// not the signal's); nothing new is accepted.
			if err := bulkhead.Close(ctx); err != nil {
				inFlight, queued := bulkhead.Stats()
				return fmt.Errorf("provider calls abandoned (%d in flight, %d queued); their payments stay processing for a retry or the reconciler: %w", inFlight, queued, err)
			}
			return nil
		}},
		Drain:   cfg.ShutdownDrainDelay,
		Timeout: cfg.ShutdownTimeout,
		Log:     log,
	})
}

// metricsNamespace prefixes the service's metric names, and names it
// where a name is needed (the authentication realm, Redis keys).
const metricsNamespace = "payservice"

// problemTypes prefixes the type URI of every problem the API answers
// with. The .example domain is reserved (RFC 2606): point it at your API's
// documentation when you adopt the template.
const problemTypes = "https://payservice.example/problems/"

// newProvider builds the provider client inside its protections. The
// bulkhead is returned too: shutdown drains it.
func newProvider(cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*provider.Resilient, *resilience.Bulkhead, error) {
	const name = "provider"
	client, err := provider.NewClient(provider.Config{BaseURL: cfg.ProviderURL, AttemptTimeout: cfg.ProviderTimeout})
	if err != nil {
		return nil, nil, err
	}
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name:           name,
		Window:         cfg.BreakerWindow,
		MinRequests:    uint32(cfg.BreakerMinRequests),
		FailureRatio:   cfg.BreakerFailureRatio,
		OpenTimeout:    cfg.BreakerOpenTimeout,
		HalfOpenProbes: uint32(cfg.BreakerHalfOpenProbes),
	}, provider.BreakerOutcome, reg, log)
	if err != nil {
		return nil, nil, err
	}
	budget, err := resilience.NewRetryBudget(name, cfg.RetryBudgetRatio, cfg.RetryBudgetPerSecond, float64(cfg.RetryBudgetCapacity), reg)
	if err != nil {
		return nil, nil, err
	}
	retrier, err := resilience.NewRetrier(name, resilience.RetryPolicy{
		MaxAttempts:    cfg.RetryMaxAttempts,
		BaseDelay:      cfg.RetryBaseDelay,
		MaxDelay:       cfg.RetryMaxDelay,
		MaxRetryAfter:  cfg.RetryMaxRetryAfter,
		AttemptTimeout: cfg.ProviderTimeout,
	}, budget, provider.RetryVerdict, reg)
	if err != nil {
		return nil, nil, err
	}
	egress, err := resilience.NewEgressLimiter(name, cfg.ProviderRateLimit, cfg.ProviderRateBurst, reg)
	if err != nil {
		return nil, nil, err
	}
	bulkhead, err := resilience.NewBulkhead(name, cfg.BulkheadWorkers, cfg.BulkheadQueue, reg)
	if err != nil {
		return nil, nil, err
	}
	return provider.NewResilient(client, provider.Protections{
		Bulkhead: bulkhead, Egress: egress, Retrier: retrier, Breaker: breaker,
	}), bulkhead, nil
}

// prepareSchema waits for Postgres, then migrates it (MIGRATE_ON_START) or
// waits for a separate `server migrate` to have done so.
func prepareSchema(ctx context.Context, cfg config.Config, pool *sql.DB, log *slog.Logger) error {
	migrator, err := postgres.NewMigrator(pool, log, paymentsdb.Migrations)
	if err != nil {
		return err
	}
	err = retryUntil(ctx, log, "postgres not reachable yet", func(ctx context.Context) error {
		return postgres.Ping(ctx, pool, 2*time.Second)
	})
	if err != nil {
		return err
	}
	if !cfg.MigrateOnStart {
		return retryUntil(ctx, log, "waiting for migrations (MIGRATE_ON_START=false)", func(ctx context.Context) error {
			pending, err := migrator.Pending(ctx)
			if err == nil && pending {
				err = fmt.Errorf("schema is older than versions %v", migrator.Versions())
			}
			return err
		})
	}
	return migrateUp(ctx, migrator, log)
}

// retryUntil calls f until it succeeds or ctx ends, backing off from 100ms
// to 5s with full jitter and logging each failure. The jitter keeps
// replicas that started together, waiting for the same database, from
// knocking on it in lockstep when it comes back.
func retryUntil(ctx context.Context, log *slog.Logger, msg string, f func(context.Context) error) error {
	ceiling := 100 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		wait := rand.N(ceiling) + time.Millisecond
		log.Warn(msg, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		ceiling = min(2*ceiling, 5*time.Second)
	}
}

// openPools opens the primary pool and, if configured, the replica's, and
// exports their statistics as metrics.
func openPools(cfg config.Config, reg prometheus.Registerer) (primary, replica *sql.DB, err error) {
	pc := postgres.PoolConfig{
		MaxOpenConns:    cfg.DBMaxOpenConns,
		MaxIdleConns:    cfg.DBMaxIdleConns,
		ConnMaxLifetime: cfg.DBConnMaxLifetime,
		ConnMaxIdleTime: cfg.DBConnMaxIdleTime,
	}
	primary, err = postgres.Open(cfg.DatabaseURL, pc)
	if err != nil {
		return nil, nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	reg.MustRegister(collectors.NewDBStatsCollector(primary, "primary"))
	if cfg.DatabaseReplicaURL == "" {
		return primary, nil, nil
	}
	replica, err = postgres.Open(cfg.DatabaseReplicaURL, pc)
	if err != nil {
		primary.Close()
		return nil, nil, fmt.Errorf("DATABASE_REPLICA_URL: %w", err)
	}
	reg.MustRegister(collectors.NewDBStatsCollector(replica, "replica"))
	return primary, replica, nil
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

// newRedis returns a client for the Redis URL. It does not connect.
func newRedis(url string) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	// Redis is a fast path: fail fast rather than make requests wait, and
	// never retry (falling back to Postgres is cheaper than a retry).
	opts.DialTimeout = 2 * time.Second
	opts.ReadTimeout = 500 * time.Millisecond
	opts.WriteTimeout = 500 * time.Millisecond
	opts.MaxRetries = -1
	// One dial per attempt: go-redis's default of 5 dials 100ms apart
	// outlasts REDIS_TIMEOUT, so while Redis is down every request's
	// operation timed out on a dial loop instead of failing at once.
	opts.DialerRetries = 1
	return redis.NewClient(opts), nil
}

// newIdempotencyStore returns the Redis fast path of idempotency, behind a
// circuit breaker of its own: while Redis is down, requests skip it at
// once instead of each waiting for REDIS_TIMEOUT.
func newIdempotencyStore(cfg config.Config, rdb *redis.Client, reg prometheus.Registerer, log *slog.Logger) (*resilience.IdempotencyStore, error) {
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name:           "redis",
		Window:         10 * time.Second, // judge Redis on the last ten seconds
		MinRequests:    5,                // a handful of failures is an outage for a cache this close
		FailureRatio:   0.5,
		OpenTimeout:    5 * time.Second, // Redis restarts in seconds: look again soon
		HalfOpenProbes: 1,
	}, resilience.RedisOutcome, reg, log)
	if err != nil {
		return nil, err
	}
	return resilience.NewIdempotencyStore(rdb, metricsNamespace+":idem", cfg.IdempotencyResponseTTL, cfg.RedisTimeout, breaker), nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
