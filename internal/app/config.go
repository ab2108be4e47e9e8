package app

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/readinessgate"
	"github.com/resiliencekit/payservice/internal/platform/redisclient"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/server"
	"github.com/resiliencekit/payservice/internal/platform/tracing"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Config is the service's whole configuration: each component's settings,
// bound to environment variables by the component's own Bind under a
// prefix. The zero value is not useful: start from Default, or Load.
type Config struct {
	HTTPAddr       string
	AdminAddr      string
	HTTP           server.HTTPConfig
	RequestTimeout time.Duration
	Shutdown       server.ShutdownConfig
	ReadinessGate  readinessgate.Config

	Postgres    postgres.Config
	Redis       redisclient.Config
	Idempotency idempotency.Config

	Provider   provider.Settings
	Reconciler payments.ReconcilerConfig

	ClientLimit    resilience.LimiterSettings // per authenticated client
	AnonymousLimit resilience.LimiterSettings // per address failing authentication
	APIKeys        web.APIKeys

	LogLevel  slog.Level
	LogFormat string
	Tracing   tracing.Config
}

// Default returns the configuration every variable defaults to.
func Default() Config {
	return Config{
		HTTPAddr:       ":8080",
		AdminAddr:      ":9090",
		HTTP:           server.DefaultHTTPConfig(),
		RequestTimeout: 10 * time.Second,
		Shutdown:       server.ShutdownConfig{Drain: 5 * time.Second, Timeout: 15 * time.Second},
		Postgres:       postgres.DefaultConfig(),
		Redis:          redisclient.DefaultConfig(),
		Idempotency:    idempotency.DefaultConfig(),
		Provider:       provider.DefaultSettings(),
		Reconciler:     payments.DefaultReconcilerConfig(),
		ClientLimit:    resilience.LimiterSettings{Name: "clients", PerSecond: 100, Burst: 200, MaxKeys: 100_000},
		AnonymousLimit: resilience.LimiterSettings{Name: "anonymous", PerSecond: 5, Burst: 20, MaxKeys: 100_000},
		LogLevel:       slog.LevelInfo,
		LogFormat:      "json",
		Tracing:        tracing.DefaultConfig(Name),
	}
}

// Bind declares every variable, in the order `server -h` lists them.
func (c *Config) Bind(b *config.Binder) {
	b.String("HTTP_ADDR", &c.HTTPAddr, "listen address of the public API")
	b.String("ADMIN_ADDR", &c.AdminAddr, "listen address of /metrics and /debug/pprof (never expose publicly)")

	c.Postgres.Bind(b)
	c.Redis.Bind(b.Prefix("REDIS_"))

	c.Idempotency.Bind(b)

	c.Reconciler.Bind(b.Prefix("RECONCILE_"))
	c.Provider.Bind(b.Prefix("PROVIDER_"))

	limits := b.Prefix("RATE_LIMIT_")
	limits.Float("PER_SECOND", &c.ClientLimit.PerSecond, 0.01, 1e6, "requests a second per authenticated client")
	limits.Int("BURST", &c.ClientLimit.Burst, 1, 1e6, "requests a client may send at once above its rate")
	limits.Float("ANONYMOUS_PER_SECOND", &c.AnonymousLimit.PerSecond, 0.01, 1e6, "requests a second per remote address failing authentication")
	limits.Int("ANONYMOUS_BURST", &c.AnonymousLimit.Burst, 1, 1e6, "burst of requests failing authentication per remote address")
	limits.Int("MAX_KEYS", &c.ClientLimit.MaxKeys, 1000, 1e8, "clients and addresses tracked per limiter; bounds its memory")

	b.Value("API_KEYS", &c.APIKeys, "client credentials as client_id:secret pairs, comma-separated").Required()

	c.HTTP.Bind(b)
	b.Duration("REQUEST_TIMEOUT", &c.RequestTimeout, "deadline of one API request, provider retries included")
	c.Shutdown.Bind(b)
	c.ReadinessGate.Bind(b)

	b.LogLevel("LOG_LEVEL", &c.LogLevel, "debug, info, warn or error")
	b.OneOf("LOG_FORMAT", &c.LogFormat, []string{"json", "text"}, "json or text")
	c.Tracing.Bind(b)

	// The provider's protections once had names of their own, from when
	// it was the only dependency with any.
	for _, name := range []string{"BREAKER_WINDOW", "BREAKER_MIN_REQUESTS", "BREAKER_FAILURE_RATIO", "BREAKER_OPEN_TIMEOUT", "BREAKER_HALF_OPEN_PROBES",
		"RETRY_MAX_ATTEMPTS", "RETRY_BASE_DELAY", "RETRY_MAX_DELAY", "RETRY_MAX_RETRY_AFTER",
		"RETRY_BUDGET_RATIO", "RETRY_BUDGET_MIN_PER_SECOND", "RETRY_BUDGET_CAPACITY", "BULKHEAD_QUEUE"} {
		b.Renamed(name, "PROVIDER_"+name)
	}
	b.Renamed("BULKHEAD_WORKERS", "PROVIDER_BULKHEAD_CONCURRENCY")
}

// Load reads the configuration through getenv. The error lists every
// problem, one per line; warnings name deprecated variables that were
// read, for the caller to log.
//
// With names, Load reads only those variables and checks no rule:
// `server healthcheck` needs HTTP_ADDR, not the API keys.
func Load(getenv func(string) string, names ...string) (Config, []string, error) {
	c := Default()
	warnings, err := config.Load(getenv, c.Bind, names...)
	if len(names) > 0 {
		return c, warnings, err
	}
	c.AnonymousLimit.MaxKeys = c.ClientLimit.MaxKeys // one variable for both
	errs := []error{err}
	errs = append(errs, c.Postgres.Check()...)
	errs = append(errs, c.ReadinessGate.Check()...)
	errs = append(errs, c.check()...)
	if err := errors.Join(errs...); err != nil {
		return Config{}, warnings, err
	}
	return c, warnings, nil
}

// check validates the relations between components.
func (c Config) check() []error {
	var errs []error
	if c.Reconciler.Grace < c.Reconciler.After {
		errs = append(errs, fmt.Errorf("RECONCILE_GRACE=%s must not be shorter than RECONCILE_AFTER=%s", c.Reconciler.Grace, c.Reconciler.After))
	}
	if r := c.Provider.Protections.Retry; r.MaxDelay < r.BaseDelay {
		errs = append(errs, fmt.Errorf("PROVIDER_RETRY_MAX_DELAY=%s must not be shorter than PROVIDER_RETRY_BASE_DELAY=%s", r.MaxDelay, r.BaseDelay))
	}
	return append(errs, c.checkTiming()...)
}

// checkTiming enforces the timing rules that keep a payment charged at most
// once. A request acts on its payment for at most REQUEST_TIMEOUT +
// SETTLE_TIMEOUT: its provider call ends SETTLE_TIMEOUT before its
// deadline, and the writes recording the answer have SETTLE_TIMEOUT of
// their own. Whatever decides that a request has stopped acting — a lease
// expiring, the reconciler finding a payment stale — must wait longer than
// that, or it races a request that is still at work.
func (c Config) checkTiming() []error {
	if c.RequestTimeout == 0 || c.Idempotency.SettleTimeout == 0 {
		return nil // one failed to parse, and is reported already
	}
	var errs []error
	acts := c.RequestTimeout + c.Idempotency.SettleTimeout
	const why = "a request acts on its payment until then"
	for _, v := range []struct {
		name  string
		value time.Duration
		what  string
	}{
		{"IDEMPOTENCY_LEASE", c.Idempotency.Lease, "and a retry must not take the payment over before"},
		{"RECONCILE_AFTER", c.Reconciler.After, "and the reconciler must not look it up before"},
		{"RECONCILE_GRACE", c.Reconciler.Grace, "and its charge may arrive at the provider until then"},
	} {
		if v.value <= acts {
			errs = append(errs, fmt.Errorf("%s=%s must be longer than REQUEST_TIMEOUT=%s + SETTLE_TIMEOUT=%s: %s, %s",
				v.name, fmtDuration(v.value), fmtDuration(c.RequestTimeout), fmtDuration(c.Idempotency.SettleTimeout), why, v.what))
		}
	}
	// The answer may come SETTLE_TIMEOUT after the deadline (a cleanup
	// that started at it); the connection must still be there.
	if c.HTTP.WriteTimeout != 0 && acts >= c.HTTP.WriteTimeout {
		errs = append(errs, fmt.Errorf("REQUEST_TIMEOUT=%s + SETTLE_TIMEOUT=%s must be shorter than HTTP_WRITE_TIMEOUT=%s, or clients get a dropped connection instead of an answer",
			fmtDuration(c.RequestTimeout), fmtDuration(c.Idempotency.SettleTimeout), fmtDuration(c.HTTP.WriteTimeout)))
	}
	// No provider attempt starts with less than PROVIDER_TIMEOUT left
	// before the call's deadline, SETTLE_TIMEOUT before the request's.
	// Were they equal, the time every request spends before the call (a
	// database write, a queue) would leave too little, and every payment
	// would be refused.
	if c.Provider.Timeout+c.Idempotency.SettleTimeout >= c.RequestTimeout {
		errs = append(errs, fmt.Errorf("PROVIDER_TIMEOUT=%s + SETTLE_TIMEOUT=%s must be shorter than REQUEST_TIMEOUT=%s, or no request has time for a provider attempt",
			fmtDuration(c.Provider.Timeout), fmtDuration(c.Idempotency.SettleTimeout), fmtDuration(c.RequestTimeout)))
	}
	return errs
}

// fmtDuration writes d as the variables are written: 12s, 1m.
func fmtDuration(d time.Duration) string { return config.FormatDuration(d) }

// Usage writes the table of variables, defaults and meanings.
func Usage(w io.Writer) {
	c := Default()
	config.Usage(w, c.Bind)
}

// LogValue lets the configuration be logged at start-up, secrets masked.
func (c Config) LogValue() slog.Value { return config.Values(c.Bind) }
