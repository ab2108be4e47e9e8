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

	RedisURL string

	ProviderURL     string
	ProviderTimeout time.Duration

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
		{name: "DB_MAX_OPEN_CONNS", def: "20", usage: "maximum open connections per pool; keep replicas × this below Postgres max_connections", val: intRange(&c.DBMaxOpenConns, 1, 1000)},
		{name: "DB_MAX_IDLE_CONNS", def: "10", usage: "idle connections kept per pool (≤ DB_MAX_OPEN_CONNS)", val: intRange(&c.DBMaxIdleConns, 0, 1000)},
		{name: "DB_CONN_MAX_LIFETIME", def: "30m", usage: "recycle connections after this long, so failovers and DNS changes are picked up", val: positiveDuration(&c.DBConnMaxLifetime)},
		{name: "DB_CONN_MAX_IDLE_TIME", def: "5m", usage: "close connections idle for this long", val: positiveDuration(&c.DBConnMaxIdleTime)},
		{name: "MIGRATE_ON_START", def: "true", usage: "apply migrations at start-up under an advisory lock; false waits for `server migrate` to have run", val: boolean(&c.MigrateOnStart)},

		{name: "REDIS_URL", def: "redis://localhost:6379/0", usage: "Redis URL (idempotency fast path and in-flight locks)", val: redisURL(&c.RedisURL)},

		{name: "PROVIDER_URL", def: "http://localhost:8081", usage: "base URL of the payment provider", val: httpURL(&c.ProviderURL)},
		{name: "PROVIDER_TIMEOUT", def: "3s", usage: "timeout of one provider attempt", val: positiveDuration(&c.ProviderTimeout)},

		{name: "API_KEYS", required: true, usage: "client credentials as client_id:secret pairs, comma-separated", val: apiKeys(&c.APIKeys)},

		{name: "HTTP_READ_HEADER_TIMEOUT", def: "5s", usage: "time to read request headers (slowloris guard)", val: positiveDuration(&c.ReadHeaderTimeout)},
		{name: "HTTP_READ_TIMEOUT", def: "10s", usage: "time to read a whole request", val: positiveDuration(&c.ReadTimeout)},
		{name: "HTTP_WRITE_TIMEOUT", def: "15s", usage: "time to write a response; must exceed REQUEST_TIMEOUT", val: positiveDuration(&c.WriteTimeout)},
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
	if c.WriteTimeout != 0 && c.RequestTimeout >= c.WriteTimeout {
		errs = append(errs, fmt.Errorf("REQUEST_TIMEOUT=%s must be shorter than HTTP_WRITE_TIMEOUT=%s, or clients get a dropped connection instead of an answer", c.RequestTimeout, c.WriteTimeout))
	}
	if c.ProviderTimeout > c.RequestTimeout && c.RequestTimeout != 0 {
		errs = append(errs, fmt.Errorf("PROVIDER_TIMEOUT=%s must not exceed REQUEST_TIMEOUT=%s", c.ProviderTimeout, c.RequestTimeout))
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
