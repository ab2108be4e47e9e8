package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// env builds a getenv from the minimal valid environment plus overrides.
func env(overrides map[string]string) func(string) string {
	base := map[string]string{
		"DATABASE_URL": "postgres://app:s3cret@db:5432/payservice?sslmode=disable",
		"API_KEYS":     "client_a:key_a,client_b:key_b",
	}
	for k, v := range overrides {
		base[k] = v
	}
	return func(k string) string { return base[k] }
}

// The defaults are part of the service's documented behaviour (the
// README's table is checked against -h): these are the ones its design
// leans on.
func TestLoad_Defaults(t *testing.T) {
	c, warnings, err := Load(env(nil))
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Load: %v, warnings %v", err, warnings)
	}
	p := c.Provider.Protections
	checks := []struct {
		name      string
		got, want any
	}{
		{"HTTPAddr", c.HTTPAddr, ":8080"},
		{"AdminAddr", c.AdminAddr, ":9090"},
		{"Shutdown.Drain", c.Shutdown.Drain, 5 * time.Second},
		{"Shutdown.Timeout", c.Shutdown.Timeout, 15 * time.Second},
		{"RequestTimeout", c.RequestTimeout, 10 * time.Second},
		{"LogLevel", c.LogLevel, slog.LevelInfo},
		{"LogFormat", c.LogFormat, "json"},
		{"Postgres.MigrateOnStart", c.Postgres.MigrateOnStart, true},
		{"Postgres.Pool.MaxOpenConns", c.Postgres.Pool.MaxOpenConns, 20},
		{"Breaker.FailureRatio", p.Breaker.FailureRatio, 0.5},
		{"Breaker.MinRequests", p.Breaker.MinRequests, 10},
		{"Breaker.Window", p.Breaker.Window, 10 * time.Second},
		{"Breaker.OpenTimeout", p.Breaker.OpenTimeout, 30 * time.Second},
		{"Breaker.HalfOpenProbes", p.Breaker.HalfOpenProbes, 3},
		{"Retry.MaxAttempts", p.Retry.MaxAttempts, 3},
		{"Bulkhead.Concurrency", p.Bulkhead.Concurrency, 32},
		{"Bulkhead.Queue", p.Bulkhead.Queue, 64},
		{"Redis.Breaker.MinRequests", c.Redis.Breaker.MinRequests, 5},
		{"ClientLimit.PerSecond", c.ClientLimit.PerSecond, 100.0},
		{"ClientLimit.Burst", c.ClientLimit.Burst, 200},
		{"AnonymousLimit.MaxKeys", c.AnonymousLimit.MaxKeys, 100_000},
		{"APIKeys", len(c.APIKeys), 2},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoad_RefusesConfigurationsThatBreakARule(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"missing database url", map[string]string{"DATABASE_URL": ""}, "DATABASE_URL is required"},
		{"missing api keys", map[string]string{"API_KEYS": ""}, "API_KEYS is required"},
		{"api key without secret", map[string]string{"API_KEYS": "client_a:"}, "API_KEYS=(hidden): entry 1 is not client_id:secret"},
		{"shared secret", map[string]string{"API_KEYS": "a:k1,b:k1"}, "entry 2 reuses another client's secret"},
		{"pool the leader would starve", map[string]string{"DB_MAX_OPEN_CONNS": "1", "DB_MAX_IDLE_CONNS": "1"}, "DB_MAX_OPEN_CONNS=1: out of range [2, 1000]"},
		{"idle above open", map[string]string{"DB_MAX_OPEN_CONNS": "2", "DB_MAX_IDLE_CONNS": "3"}, "DB_MAX_IDLE_CONNS=3 must not exceed DB_MAX_OPEN_CONNS=2"},
		{"max delay below base delay", map[string]string{"PROVIDER_RETRY_BASE_DELAY": "2s", "PROVIDER_RETRY_MAX_DELAY": "1s"}, "PROVIDER_RETRY_MAX_DELAY=1s must not be shorter than PROVIDER_RETRY_BASE_DELAY=2s"},
		{"too many attempts", map[string]string{"PROVIDER_RETRY_MAX_ATTEMPTS": "50"}, "PROVIDER_RETRY_MAX_ATTEMPTS=50: out of range [1, 10]"},
		{"redis breaker ratio", map[string]string{"REDIS_BREAKER_FAILURE_RATIO": "2"}, "REDIS_BREAKER_FAILURE_RATIO=2: out of range [0.01, 1]"},
		{"provider url no host", map[string]string{"PROVIDER_URL": "http://"}, "PROVIDER_URL=(hidden): no host"},
		{"request timeout above write timeout", map[string]string{"REQUEST_TIMEOUT": "20s", "IDEMPOTENCY_LEASE": "1m"}, "REQUEST_TIMEOUT=20s + SETTLE_TIMEOUT=2s must be shorter than HTTP_WRITE_TIMEOUT=15s"},
		{"no time to write the last answer", map[string]string{"REQUEST_TIMEOUT": "13s", "IDEMPOTENCY_LEASE": "1m"}, "REQUEST_TIMEOUT=13s + SETTLE_TIMEOUT=2s must be shorter than HTTP_WRITE_TIMEOUT=15s"},
		{"provider timeout above request timeout", map[string]string{"PROVIDER_TIMEOUT": "11s"}, "PROVIDER_TIMEOUT=11s + SETTLE_TIMEOUT=2s must be shorter than REQUEST_TIMEOUT=10s"},
		{"no room to record the provider's answer", map[string]string{"PROVIDER_TIMEOUT": "8s"}, "PROVIDER_TIMEOUT=8s + SETTLE_TIMEOUT=2s must be shorter than REQUEST_TIMEOUT=10s"},
		// The timing rules of at-most-once: nothing may decide a request
		// stopped acting while it still can.
		{"lease a request can outlive", map[string]string{"IDEMPOTENCY_LEASE": "12s"}, "IDEMPOTENCY_LEASE=12s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"reconciler racing requests", map[string]string{"RECONCILE_AFTER": "5s"}, "RECONCILE_AFTER=5s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"grace shorter than a request", map[string]string{"RECONCILE_AFTER": "1s", "RECONCILE_GRACE": "1s"}, "RECONCILE_GRACE=1s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"grace shorter than after", map[string]string{"RECONCILE_AFTER": "2m", "RECONCILE_GRACE": "1m"}, "RECONCILE_GRACE=1m0s must not be shorter than RECONCILE_AFTER=2m0s"},
		{"settle budget counts", map[string]string{"REQUEST_TIMEOUT": "5s", "SETTLE_TIMEOUT": "25s", "HTTP_WRITE_TIMEOUT": "1m"}, "IDEMPOTENCY_LEASE=30s must be longer than REQUEST_TIMEOUT=5s + SETTLE_TIMEOUT=25s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Load(env(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoad_AcceptsShortLeasesWithShortRequests(t *testing.T) {
	// Tests and game days shorten leases: the request timeout comes down
	// with them.
	_, _, err := Load(env(map[string]string{
		"REQUEST_TIMEOUT": "1s", "PROVIDER_TIMEOUT": "500ms", "SETTLE_TIMEOUT": "250ms",
		"IDEMPOTENCY_LEASE": "2s", "RECONCILE_AFTER": "1500ms", "RECONCILE_GRACE": "2s",
	}))
	if err != nil {
		t.Fatal(err)
	}
}

// Variables renamed when the provider's protections got its prefix are
// still read, and named as deprecated, so an existing manifest keeps its
// settings.
func TestLoad_TheProvidersOldNamesStillWork(t *testing.T) {
	c, warnings, err := Load(env(map[string]string{
		"BREAKER_MIN_REQUESTS": "4", "RETRY_MAX_ATTEMPTS": "5", "RETRY_BUDGET_RATIO": "0.5",
		"BULKHEAD_WORKERS": "7", "BULKHEAD_QUEUE": "9",
	}))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Provider.Protections
	if p.Breaker.MinRequests != 4 || p.Retry.MaxAttempts != 5 || p.Budget.Ratio != 0.5 || p.Bulkhead.Concurrency != 7 || p.Bulkhead.Queue != 9 {
		t.Errorf("old names gave %+v", p)
	}
	joined := strings.Join(warnings, "\n")
	for _, want := range []string{"BREAKER_MIN_REQUESTS is deprecated", "PROVIDER_BREAKER_MIN_REQUESTS", "BULKHEAD_WORKERS is deprecated", "PROVIDER_BULKHEAD_CONCURRENCY"} {
		if !strings.Contains(joined, want) {
			t.Errorf("warnings lack %q:\n%s", want, joined)
		}
	}
	if len(warnings) != 5 {
		t.Errorf("%d warnings, want one per old name:\n%s", len(warnings), joined)
	}
}

func TestLoad_NeverEchoesOrLogsSecrets(t *testing.T) {
	_, _, err := Load(env(map[string]string{"API_KEYS": "client_a:topsecret,broken"}))
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("error must exist and must not contain the secret: %v", err)
	}
	c, _, err := Load(env(map[string]string{
		// A password may also come in the query: lib/pq and go-redis read it there.
		"DATABASE_REPLICA_URL": "postgres://reader@replica:5432/payservice?sslmode=disable&password=r3plica",
		"REDIS_URL":            "redis://cache:6379/0?password=r3dis",
	}))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	for _, secret := range []string{"s3cret", "key_a", "key_b", "r3plica", "r3dis"} {
		if strings.Contains(buf.String(), secret) {
			t.Errorf("the logged configuration contains %q:\n%s", secret, buf.String())
		}
	}
}

func TestLoad_WithNamesReadsOnlyThose(t *testing.T) {
	// A healthcheck runs with whatever environment the container has; it
	// must not fail because API_KEYS is missing.
	c, _, err := Load(func(k string) string { return map[string]string{"HTTP_ADDR": ":1234"}[k] }, "HTTP_ADDR")
	if err != nil || c.HTTPAddr != ":1234" {
		t.Fatalf("Load(HTTP_ADDR) = %q, %v", c.HTTPAddr, err)
	}
}
