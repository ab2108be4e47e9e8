// Package config reads the service's configuration from environment
// variables, once, at start-up.
//
// Every variable is declared in one table (see bind) with its default and a
// sentence saying what it does; the same table drives parsing, validation and
// the `server -h` listing, so the documentation cannot drift from the code.
// Load reports every bad or missing variable by name, with what was expected,
// instead of stopping at the first: an operator fixing a manifest wants the
// whole list. The trade-off is a small hand-written parser instead of a
// library; it is about a hundred lines and has no dependencies.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Config is the whole configuration of the server. The zero value is not
// useful: build one with Load.
type Config struct {
	HTTPAddr  string
	AdminAddr string

	DatabaseURL        string
	DatabaseReplicaURL string
	DBMaxOpenConns     int
	DBMaxIdleConns     int
	DBConnMaxLifetime  time.Duration
	DBConnMaxIdleTime  time.Duration
	MigrateOnStart     bool

	RedisURL     string
	RedisTimeout time.Duration

	IdempotencyLease       time.Duration
	IdempotencyResponseTTL time.Duration
	SettleTimeout          time.Duration

	ReconcileInterval time.Duration
	ReconcileAfter    time.Duration
	ReconcileGrace    time.Duration
	ReconcileBatch    int

	ProviderURL       string
	ProviderTimeout   time.Duration
	ProviderRateLimit float64
	ProviderRateBurst int

	BreakerWindow         time.Duration
	BreakerMinRequests    int
	BreakerFailureRatio   float64
	BreakerOpenTimeout    time.Duration
	BreakerHalfOpenProbes int

	RetryMaxAttempts     int
	RetryBaseDelay       time.Duration
	RetryMaxDelay        time.Duration
	RetryMaxRetryAfter   time.Duration
	RetryBudgetRatio     float64
	RetryBudgetPerSecond float64
	RetryBudgetCapacity  int

	BulkheadWorkers int
	BulkheadQueue   int

	RateLimitPerSecond     float64
	RateLimitBurst         int
	RateLimitAnonPerSecond float64
	RateLimitAnonBurst     int
	RateLimitMaxKeys       int

	APIKeys APIKeys

	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	RequestTimeout    time.Duration

	ShutdownDrainDelay time.Duration
	ShutdownTimeout    time.Duration

	LogLevel  slog.Level
	LogFormat string
}

// variable is one environment variable: its name, its default (empty means
// none), what it means, and the typed value that parses into the Config.
type variable struct {
	name     string
	def      string
	usage    string
	required bool
	val      value
}

// value is flag.Value by another name: it parses text into a field of the
// Config and renders it back for the start-up log.
type value interface {
	Set(string) error
	String() string
}

// secret is implemented by values that must not be logged as they are.
type secret interface{ Masked() string }

// bind declares every variable, bound to the fields of c. Keep it sorted by
// theme: it is also the order of `server -h`.
func bind(c *Config) []variable {
	return []variable{
		{name: "HTTP_ADDR", def: ":8080", usage: "listen address of the public API", val: str(&c.HTTPAddr)},
		{name: "ADMIN_ADDR", def: ":9090", usage: "listen address of /metrics and /debug/pprof (never expose publicly)", val: str(&c.AdminAddr)},

		{name: "DATABASE_URL", required: true, usage: "primary Postgres URL, e.g. postgres://user:pass@host:5432/payservice?sslmode=disable", val: dsn(&c.DatabaseURL)},
		{name: "DATABASE_REPLICA_URL", usage: "optional read-replica Postgres URL for GET requests; reads fall back to the primary when it fails", val: dsn(&c.DatabaseReplicaURL)},
		{name: "DB_MAX_OPEN_CONNS", def: "20", usage: "maximum open connections per pool, at least 2 (the active reconciler holds one); keep replicas × this below Postgres max_connections", val: intRange(&c.DBMaxOpenConns, 2, 1000)},
		{name: "DB_MAX_IDLE_CONNS", def: "20", usage: "idle connections kept per pool (≤ DB_MAX_OPEN_CONNS); below it, every burst closes and reopens connections", val: intRange(&c.DBMaxIdleConns, 0, 1000)},
		{name: "DB_CONN_MAX_LIFETIME", def: "30m", usage: "recycle connections after this long, so failovers and DNS changes are picked up", val: positiveDuration(&c.DBConnMaxLifetime)},
		{name: "DB_CONN_MAX_IDLE_TIME", def: "5m", usage: "close connections idle for this long", val: positiveDuration(&c.DBConnMaxIdleTime)},
		{name: "MIGRATE_ON_START", def: "true", usage: "apply migrations at start-up under an advisory lock; false waits for `server migrate` to have run", val: boolean(&c.MigrateOnStart)},

		{name: "REDIS_URL", def: "redis://localhost:6379/0", usage: "Redis URL (idempotency fast path and in-flight locks)", val: redisURL(&c.RedisURL)},
		{name: "REDIS_TIMEOUT", def: "250ms", usage: "bound on one Redis operation; past it the request falls back to Postgres", val: positiveDuration(&c.RedisTimeout)},

		{name: "IDEMPOTENCY_LEASE", def: "30s", usage: "how long a request holds its key before a retry may take over (how long a crashed request blocks it); longer than REQUEST_TIMEOUT + SETTLE_TIMEOUT", val: positiveDuration(&c.IdempotencyLease)},
		{name: "IDEMPOTENCY_RESPONSE_TTL", def: "24h", usage: "how long Redis caches completed responses (Postgres keeps them for good)", val: positiveDuration(&c.IdempotencyResponseTTL)},
		{name: "SETTLE_TIMEOUT", def: "2s", usage: "budget for recording the provider's answer; provider calls end this long before REQUEST_TIMEOUT, and the write is not cut short by it", val: positiveDuration(&c.SettleTimeout)},

		{name: "RECONCILE_INTERVAL", def: "30s", usage: "how often the active reconciler scans for payments left processing", val: positiveDuration(&c.ReconcileInterval)},
		{name: "RECONCILE_AFTER", def: "1m", usage: "age of a processing payment's last charge attempt before the reconciler looks it up; longer than REQUEST_TIMEOUT + SETTLE_TIMEOUT", val: positiveDuration(&c.ReconcileAfter)},
		{name: "RECONCILE_GRACE", def: "5m", usage: "age after which a payment the provider has no charge for is failed; at least RECONCILE_AFTER", val: positiveDuration(&c.ReconcileGrace)},
		{name: "RECONCILE_BATCH", def: "100", usage: "payments reconciled per scan", val: intRange(&c.ReconcileBatch, 1, 10000)},

		{name: "PROVIDER_URL", def: "http://localhost:8081", usage: "base URL of the payment provider", val: httpURL(&c.ProviderURL)},
		{name: "PROVIDER_TIMEOUT", def: "3s", usage: "timeout of one provider attempt; no attempt starts with less time left before REQUEST_TIMEOUT - SETTLE_TIMEOUT", val: positiveDuration(&c.ProviderTimeout)},
		{name: "PROVIDER_RATE_LIMIT", def: "100", usage: "provider calls per second, the provider's quota; a call waits for room only within its deadline", val: floatRange(&c.ProviderRateLimit, 0.1, 100000)},
		{name: "PROVIDER_RATE_BURST", def: "20", usage: "provider calls that may go at once above the steady rate", val: intRange(&c.ProviderRateBurst, 1, 100000)},

		{name: "BREAKER_WINDOW", def: "10s", usage: "rolling window of the circuit breaker's trip rule", val: positiveDuration(&c.BreakerWindow)},
		{name: "BREAKER_MIN_REQUESTS", def: "10", usage: "provider calls in the window before the breaker may trip", val: intRange(&c.BreakerMinRequests, 1, 100000)},
		{name: "BREAKER_FAILURE_RATIO", def: "0.5", usage: "fraction of failed calls in the window that trips the breaker", val: floatRange(&c.BreakerFailureRatio, 0.01, 1)},
		{name: "BREAKER_OPEN_TIMEOUT", def: "30s", usage: "how long a tripped breaker fails calls at once before probing", val: positiveDuration(&c.BreakerOpenTimeout)},
		{name: "BREAKER_HALF_OPEN_PROBES", def: "3", usage: "probe calls let through half-open; all must succeed to close", val: intRange(&c.BreakerHalfOpenProbes, 1, 1000)},

		{name: "RETRY_MAX_ATTEMPTS", def: "3", usage: "attempts per provider call, the first included", val: intRange(&c.RetryMaxAttempts, 1, 10)},
		{name: "RETRY_BASE_DELAY", def: "100ms", usage: "backoff before the first retry (doubling, capped, full jitter)", val: positiveDuration(&c.RetryBaseDelay)},
		{name: "RETRY_MAX_DELAY", def: "1s", usage: "cap on the backoff between retries", val: positiveDuration(&c.RetryMaxDelay)},
		{name: "RETRY_MAX_RETRY_AFTER", def: "2s", usage: "longest provider Retry-After honoured; a longer one ends the retries", val: nonNegativeDuration(&c.RetryMaxRetryAfter)},
		{name: "RETRY_BUDGET_RATIO", def: "0.2", usage: "retries allowed per provider call, across all callers (the retry budget)", val: floatRange(&c.RetryBudgetRatio, 0, 10)},
		{name: "RETRY_BUDGET_MIN_PER_SECOND", def: "5", usage: "retries a second always allowed, so a quiet service can still retry", val: floatRange(&c.RetryBudgetPerSecond, 0, 100000)},
		{name: "RETRY_BUDGET_CAPACITY", def: "10", usage: "most retries the budget can save up", val: intRange(&c.RetryBudgetCapacity, 1, 100000)},

		{name: "BULKHEAD_WORKERS", def: "32", usage: "provider calls in progress at once", val: intRange(&c.BulkheadWorkers, 1, 10000)},
		{name: "BULKHEAD_QUEUE", def: "64", usage: "provider calls waiting for a worker; beyond, requests get 503 at once", val: intRange(&c.BulkheadQueue, 0, 100000)},

		{name: "RATE_LIMIT_PER_SECOND", def: "100", usage: "requests a second per authenticated client", val: floatRange(&c.RateLimitPerSecond, 0.01, 1e6)},
		{name: "RATE_LIMIT_BURST", def: "200", usage: "requests a client may send at once above its rate", val: intRange(&c.RateLimitBurst, 1, 1e6)},
		{name: "RATE_LIMIT_ANONYMOUS_PER_SECOND", def: "5", usage: "requests a second per remote address failing authentication", val: floatRange(&c.RateLimitAnonPerSecond, 0.01, 1e6)},
		{name: "RATE_LIMIT_ANONYMOUS_BURST", def: "20", usage: "burst of requests failing authentication per remote address", val: intRange(&c.RateLimitAnonBurst, 1, 1e6)},
		{name: "RATE_LIMIT_MAX_KEYS", def: "100000", usage: "clients and addresses tracked per limiter; bounds its memory", val: intRange(&c.RateLimitMaxKeys, 1000, 1e8)},

		{name: "API_KEYS", required: true, usage: "client credentials as client_id:secret pairs, comma-separated", val: apiKeys(&c.APIKeys)},

		{name: "HTTP_READ_HEADER_TIMEOUT", def: "5s", usage: "time to read request headers (slowloris guard)", val: positiveDuration(&c.ReadHeaderTimeout)},
		{name: "HTTP_READ_TIMEOUT", def: "10s", usage: "time to read a whole request", val: positiveDuration(&c.ReadTimeout)},
		{name: "HTTP_WRITE_TIMEOUT", def: "15s", usage: "time to write a response; must exceed REQUEST_TIMEOUT + SETTLE_TIMEOUT", val: positiveDuration(&c.WriteTimeout)},
		{name: "HTTP_IDLE_TIMEOUT", def: "120s", usage: "keep-alive idle time; above the load balancer's, so it closes first", val: positiveDuration(&c.IdleTimeout)},
		{name: "REQUEST_TIMEOUT", def: "10s", usage: "deadline of one API request, provider retries included", val: positiveDuration(&c.RequestTimeout)},

		{name: "SHUTDOWN_DRAIN_DELAY", def: "5s", usage: "after SIGTERM, keep serving (not ready) this long so load balancers stop sending", val: nonNegativeDuration(&c.ShutdownDrainDelay)},
		{name: "SHUTDOWN_TIMEOUT", def: "15s", usage: "then wait at most this long for in-flight requests and provider work", val: positiveDuration(&c.ShutdownTimeout)},

		{name: "LOG_LEVEL", def: "info", usage: "debug, info, warn or error", val: logLevel(&c.LogLevel)},
		{name: "LOG_FORMAT", def: "json", usage: "json or text", val: oneOf(&c.LogFormat, "json", "text")},
	}
}

// Load reads the variables through getenv. Unset or empty variables take
// their defaults. The error lists every problem, one per line.
//
// With names, Load reads only those variables and leaves the rest of the
// Config zero: `server healthcheck` needs HTTP_ADDR, not the API keys.
func Load(getenv func(string) string, names ...string) (Config, error) {
	var c Config
	var errs []error
	for _, v := range bind(&c) {
		if len(names) > 0 && !slices.Contains(names, v.name) {
			continue
		}
		raw := strings.TrimSpace(getenv(v.name))
		if raw == "" {
			if v.required {
				errs = append(errs, fmt.Errorf("%s is required: %s", v.name, v.usage))
				continue
			}
			raw = v.def
			if raw == "" {
				continue
			}
		}
		if err := v.val.Set(raw); err != nil {
			// Never echo a secret back, even a malformed one: error
			// messages end up in logs.
			shown := raw
			if _, ok := v.val.(secret); ok {
				shown = "(hidden)"
			}
			errs = append(errs, fmt.Errorf("%s=%s: %v; expected %s", v.name, shown, err, v.usage))
		}
	}
	if len(names) > 0 {
		if len(errs) > 0 {
			return Config{}, errors.Join(errs...)
		}
		return c, nil
	}
	errs = append(errs, c.check()...)
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// check validates relations between variables.
func (c Config) check() []error {
	var errs []error
	if c.DBMaxIdleConns > c.DBMaxOpenConns {
		errs = append(errs, fmt.Errorf("DB_MAX_IDLE_CONNS=%d must not exceed DB_MAX_OPEN_CONNS=%d", c.DBMaxIdleConns, c.DBMaxOpenConns))
	}
	if c.ReconcileGrace < c.ReconcileAfter {
		errs = append(errs, fmt.Errorf("RECONCILE_GRACE=%s must not be shorter than RECONCILE_AFTER=%s", c.ReconcileGrace, c.ReconcileAfter))
	}
	if c.RetryMaxDelay < c.RetryBaseDelay {
		errs = append(errs, fmt.Errorf("RETRY_MAX_DELAY=%s must not be shorter than RETRY_BASE_DELAY=%s", c.RetryMaxDelay, c.RetryBaseDelay))
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
	if c.RequestTimeout == 0 || c.SettleTimeout == 0 {
		return nil // one failed to parse, and is reported already
	}
	var errs []error
	acts := c.RequestTimeout + c.SettleTimeout
	const why = "a request acts on its payment until then"
	for _, v := range []struct {
		name  string
		value time.Duration
		what  string
	}{
		{"IDEMPOTENCY_LEASE", c.IdempotencyLease, "and a retry must not take the payment over before"},
		{"RECONCILE_AFTER", c.ReconcileAfter, "and the reconciler must not look it up before"},
		{"RECONCILE_GRACE", c.ReconcileGrace, "and its charge may arrive at the provider until then"},
	} {
		if v.value <= acts {
			errs = append(errs, fmt.Errorf("%s=%s must be longer than REQUEST_TIMEOUT=%s + SETTLE_TIMEOUT=%s: %s, %s",
				v.name, v.value, c.RequestTimeout, c.SettleTimeout, why, v.what))
		}
	}
	// The answer may come SETTLE_TIMEOUT after the deadline (a cleanup
	// that started at it); the connection must still be there.
	if c.WriteTimeout != 0 && acts >= c.WriteTimeout {
		errs = append(errs, fmt.Errorf("REQUEST_TIMEOUT=%s + SETTLE_TIMEOUT=%s must be shorter than HTTP_WRITE_TIMEOUT=%s, or clients get a dropped connection instead of an answer",
			c.RequestTimeout, c.SettleTimeout, c.WriteTimeout))
	}
	// No provider attempt starts with less than PROVIDER_TIMEOUT left
	// before the call's deadline, SETTLE_TIMEOUT before the request's.
	// Were they equal, the time every request spends before the call (a
	// database write, a queue) would leave too little, and every payment
	// would be refused.
	if c.ProviderTimeout+c.SettleTimeout >= c.RequestTimeout {
		errs = append(errs, fmt.Errorf("PROVIDER_TIMEOUT=%s + SETTLE_TIMEOUT=%s must be shorter than REQUEST_TIMEOUT=%s, or no request has time for a provider attempt",
			c.ProviderTimeout, c.SettleTimeout, c.RequestTimeout))
	}
	return errs
}

// Usage writes the table of variables, defaults and meanings.
func Usage(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range bind(&Config{}) {
		def := v.def
		switch {
		case v.required:
			def = "(required)"
		case def == "":
			def = "(unset)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.name, def, v.usage)
	}
	tw.Flush()
}

// LogValue lets the configuration be logged at start-up, secrets masked.
func (c Config) LogValue() slog.Value {
	vars := bind(&c)
	attrs := make([]slog.Attr, 0, len(vars))
	for _, v := range vars {
		shown := v.val.String()
		if s, ok := v.val.(secret); ok {
			shown = s.Masked()
		}
		attrs = append(attrs, slog.String(v.name, shown))
	}
	return slog.GroupValue(attrs...)
}
