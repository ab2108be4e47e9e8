// Package redisclient connects a service to Redis as to a fast path it can
// live without: every operation fails fast, none is retried, and a circuit
// breaker of its own (Config.Breaker) lets callers skip Redis at once while
// it is down instead of each waiting for a timeout. Falling back to the
// durable store is cheaper than a retry.
package redisclient

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// Config says where Redis is and how fast to give up on it.
type Config struct {
	URL string
	// Timeout bounds one operation; past it the caller falls back.
	Timeout time.Duration
	Breaker resilience.BreakerSettings
}

// DefaultConfig judges Redis on the last ten seconds: a handful of
// failures is an outage for a cache this close, and as it restarts in
// seconds, an open breaker looks again soon.
func DefaultConfig() Config {
	return Config{
		URL:     "redis://localhost:6379/0",
		Timeout: 250 * time.Millisecond,
		Breaker: resilience.BreakerSettings{Window: 10 * time.Second, MinRequests: 5, FailureRatio: 0.5, OpenTimeout: 5 * time.Second, HalfOpenProbes: 1},
	}
}

// Bind declares URL, TIMEOUT and BREAKER_* after b's prefix (say REDIS_).
func (c *Config) Bind(b *config.Binder) {
	b.URL("URL", &c.URL, []string{"redis", "rediss"}, "Redis URL")
	b.Duration("TIMEOUT", &c.Timeout, "bound on one Redis operation; past it the request falls back to Postgres")
	c.Breaker.Bind(b.Prefix("BREAKER_"))
}

// New returns a client for c.URL. It does not connect.
func New(c Config) (*redis.Client, error) {
	opts, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	opts.DialTimeout = 2 * time.Second
	// The operation's deadline must bound its socket reads and writes too:
	// without ContextTimeoutEnabled, go-redis ignores the context's deadline
	// once a command is on the wire and waits out ReadTimeout, so a Redis
	// that stalls (restarting, failing over) held every request for that
	// long, not for c.Timeout. The game day's Redis scenario found it.
	opts.ContextTimeoutEnabled = true
	opts.ReadTimeout = cmp.Or(c.Timeout, 500*time.Millisecond)
	opts.WriteTimeout = opts.ReadTimeout
	opts.MaxRetries = -1
	// One dial per attempt: go-redis's default of 5 dials 100ms apart
	// outlasts the operation timeout, so while Redis is down every
	// operation timed out on a dial loop instead of failing at once.
	opts.DialerRetries = 1
	return redis.NewClient(opts), nil
}

// UseLogger sends go-redis's own log lines (a dial that failed, a
// connection dropped by a hook) to log as warnings, structured like every
// other line; otherwise go-redis prints plain text to stderr, a line per
// failed dial while Redis is down. go-redis has one logger per process,
// not one per client: call it once, at start-up; the last call wins.
func UseLogger(log *slog.Logger) {
	redis.SetLogger(logger{log})
}

// logger adapts a *slog.Logger to go-redis's logging interface.
type logger struct{ log *slog.Logger }

func (l logger) Printf(ctx context.Context, format string, v ...any) {
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	l.log.WarnContext(ctx, msg, "component", "go-redis")
}
