package config

import (
	"bytes"
	"log/slog"
	"regexp"
	"slices"
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

func TestLoad_Defaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"HTTPAddr", c.HTTPAddr, ":8080"},
		{"AdminAddr", c.AdminAddr, ":9090"},
		{"ShutdownDrainDelay", c.ShutdownDrainDelay, 5 * time.Second},
		{"ShutdownTimeout", c.ShutdownTimeout, 15 * time.Second},
		{"LogLevel", c.LogLevel, slog.LevelInfo},
		{"LogFormat", c.LogFormat, "json"},
		{"MigrateOnStart", c.MigrateOnStart, true},
		{"DBMaxOpenConns", c.DBMaxOpenConns, 20},
		{"BreakerFailureRatio", c.BreakerFailureRatio, 0.5},
		{"BreakerMinRequests", c.BreakerMinRequests, 10},
		{"BreakerOpenTimeout", c.BreakerOpenTimeout, 30 * time.Second},
		{"BreakerHalfOpenProbes", c.BreakerHalfOpenProbes, 3},
		{"RetryMaxAttempts", c.RetryMaxAttempts, 3},
		{"RateLimitPerSecond", c.RateLimitPerSecond, 100.0},
		{"RateLimitBurst", c.RateLimitBurst, 200},
		{"APIKeys", len(c.APIKeys), 2},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoad_RejectsBadValuesNamingTheVariable(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"missing database url", map[string]string{"DATABASE_URL": ""}, "DATABASE_URL is required"},
		{"database url wrong scheme", map[string]string{"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL=(hidden): scheme must be postgres or postgresql"},
		{"missing api keys", map[string]string{"API_KEYS": ""}, "API_KEYS is required"},
		{"api key without secret", map[string]string{"API_KEYS": "client_a:"}, "API_KEYS=(hidden): entry 1 is not client_id:secret"},
		{"duplicate client", map[string]string{"API_KEYS": "a:k1,a:k2"}, `client id "a" appears twice`},
		{"shared secret", map[string]string{"API_KEYS": "a:k1,b:k1"}, "entry 2 reuses another client's secret"},
		{"bad duration", map[string]string{"SHUTDOWN_TIMEOUT": "soon"}, "SHUTDOWN_TIMEOUT=soon: not a duration"},
		{"zero duration", map[string]string{"SHUTDOWN_TIMEOUT": "0s"}, "SHUTDOWN_TIMEOUT=0s: must be greater than zero"},
		{"negative drain", map[string]string{"SHUTDOWN_DRAIN_DELAY": "-1s"}, "SHUTDOWN_DRAIN_DELAY=-1s: negative"},
		{"bad int", map[string]string{"DB_MAX_OPEN_CONNS": "many"}, "DB_MAX_OPEN_CONNS=many: not an integer"},
		{"int out of range", map[string]string{"DB_MAX_OPEN_CONNS": "0"}, "DB_MAX_OPEN_CONNS=0: out of range [2, 1000]"},
		{"pool the reconciler would starve", map[string]string{"DB_MAX_OPEN_CONNS": "1", "DB_MAX_IDLE_CONNS": "1"}, "DB_MAX_OPEN_CONNS=1: out of range [2, 1000]; expected maximum open connections per pool, at least 2 (the active reconciler holds one)"},
		{"idle above open", map[string]string{"DB_MAX_OPEN_CONNS": "2", "DB_MAX_IDLE_CONNS": "3"}, "DB_MAX_IDLE_CONNS=3 must not exceed DB_MAX_OPEN_CONNS=2"},
		{"bad bool", map[string]string{"MIGRATE_ON_START": "maybe"}, "MIGRATE_ON_START=maybe: not a boolean"},
		{"bad level", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL=loud: not one of debug, info, warn, error"},
		{"bad format", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT=xml: not one of json, text"},
		{"ratio above one", map[string]string{"BREAKER_FAILURE_RATIO": "1.5"}, "BREAKER_FAILURE_RATIO=1.5: out of range [0.01, 1]"},
		{"ratio not a number", map[string]string{"BREAKER_FAILURE_RATIO": "NaN"}, "BREAKER_FAILURE_RATIO=NaN: not a number"},
		{"rate not a number", map[string]string{"RATE_LIMIT_PER_SECOND": "fast"}, "RATE_LIMIT_PER_SECOND=fast: not a number"},
		{"max delay below base delay", map[string]string{"RETRY_BASE_DELAY": "2s", "RETRY_MAX_DELAY": "1s"}, "RETRY_MAX_DELAY=1s must not be shorter than RETRY_BASE_DELAY=2s"},
		{"too many attempts", map[string]string{"RETRY_MAX_ATTEMPTS": "50"}, "RETRY_MAX_ATTEMPTS=50: out of range [1, 10]"},
		{"provider url no host", map[string]string{"PROVIDER_URL": "http://"}, "PROVIDER_URL=(hidden): no host"},
		{"request timeout above write timeout", map[string]string{"REQUEST_TIMEOUT": "20s"}, "REQUEST_TIMEOUT=20s + SETTLE_TIMEOUT=2s must be shorter than HTTP_WRITE_TIMEOUT=15s"},
		{"no time to write the last answer", map[string]string{"REQUEST_TIMEOUT": "13s", "IDEMPOTENCY_LEASE": "1m"}, "REQUEST_TIMEOUT=13s + SETTLE_TIMEOUT=2s must be shorter than HTTP_WRITE_TIMEOUT=15s"},
		{"provider timeout above request timeout", map[string]string{"PROVIDER_TIMEOUT": "11s"}, "PROVIDER_TIMEOUT=11s + SETTLE_TIMEOUT=2s must be shorter than REQUEST_TIMEOUT=10s"},
		{"no room to record the provider's answer", map[string]string{"PROVIDER_TIMEOUT": "8s"}, "PROVIDER_TIMEOUT=8s + SETTLE_TIMEOUT=2s must be shorter than REQUEST_TIMEOUT=10s"},
		// The timing rules of at-most-once: nothing may decide a request
		// stopped acting while it still can.
		{"lease a request can outlive", map[string]string{"IDEMPOTENCY_LEASE": "12s"}, "IDEMPOTENCY_LEASE=12s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"reconciler racing requests", map[string]string{"RECONCILE_AFTER": "5s"}, "RECONCILE_AFTER=5s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"grace shorter than a request", map[string]string{"RECONCILE_AFTER": "1s", "RECONCILE_GRACE": "1s"}, "RECONCILE_GRACE=1s must be longer than REQUEST_TIMEOUT=10s + SETTLE_TIMEOUT=2s"},
		{"settle budget counts", map[string]string{"REQUEST_TIMEOUT": "5s", "SETTLE_TIMEOUT": "25s", "HTTP_WRITE_TIMEOUT": "1m"}, "IDEMPOTENCY_LEASE=30s must be longer than REQUEST_TIMEOUT=5s + SETTLE_TIMEOUT=25s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			if err == nil {
				t.Fatalf("Load succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %q\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoad_AcceptsShortLeasesWithShortRequests(t *testing.T) {
	// Tests and game days shorten leases: the request timeout comes down
	// with them.
	_, err := Load(env(map[string]string{
		"REQUEST_TIMEOUT": "1s", "PROVIDER_TIMEOUT": "500ms", "SETTLE_TIMEOUT": "250ms",
		"IDEMPOTENCY_LEASE": "2s", "RECONCILE_AFTER": "1500ms", "RECONCILE_GRACE": "2s",
	}))
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoad_ReportsEveryProblemOnItsOwnLine(t *testing.T) {
	_, err := Load(func(string) string { return "" })
	if err == nil {
		t.Fatal("Load of an empty environment succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "DATABASE_URL is required") || !strings.HasPrefix(lines[1], "API_KEYS is required") {
		t.Fatalf("want one line for DATABASE_URL and one for API_KEYS, got:\n%s", err)
	}
}

func TestLoad_NeverEchoesSecrets(t *testing.T) {
	_, err := Load(env(map[string]string{"API_KEYS": "client_a:topsecret,broken"}))
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("error must exist and must not contain the secret: %v", err)
	}

	c, err := Load(env(map[string]string{
		// A password may also come in the query: lib/pq and go-redis read it there.
		"DATABASE_REPLICA_URL": "postgres://reader@replica:5432/payservice?sslmode=disable&password=r3plica",
		"REDIS_URL":            "redis://cache:6379/0?password=r3dis",
	}))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c)
	logged := buf.String()
	for _, secret := range []string{"s3cret", "key_a", "key_b", "r3plica", "r3dis"} {
		if strings.Contains(logged, secret) {
			t.Errorf("logged configuration contains %q:\n%s", secret, logged)
		}
	}
	for _, want := range []string{"client_a:***", "HTTP_ADDR=:8080", "app:xxxxx@db"} {
		if !strings.Contains(logged, want) {
			t.Errorf("logged configuration lacks %q:\n%s", want, logged)
		}
	}
}

func TestUsage_ListsEveryVariableWithDefault(t *testing.T) {
	var buf bytes.Buffer
	Usage(&buf)
	// Each variable's own row, split into its columns: tabwriter pads them
	// with at least two spaces, and no name or default has two in a row.
	// A default found anywhere else in the text proves nothing: "20" and
	// "10s" belong to several variables.
	type row struct{ def, usage string }
	rows := map[string]row{}
	columns := regexp.MustCompile(` {2,}`)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if got := columns.Split(lines[0], -1); !slices.Equal(got, []string{"VARIABLE", "DEFAULT", "MEANING"}) {
		t.Errorf("header %q, want VARIABLE, DEFAULT, MEANING", lines[0])
	}
	for _, line := range lines[1:] {
		f := columns.Split(line, 3)
		if len(f) != 3 {
			t.Errorf("row %q: want three columns", line)
			continue
		}
		if _, dup := rows[f[0]]; dup {
			t.Errorf("%s has more than one row", f[0])
		}
		rows[f[0]] = row{f[1], f[2]}
	}

	vars := bind(&Config{})
	for _, v := range vars {
		def := v.def
		switch {
		case v.required:
			def = "(required)"
		case def == "":
			def = "(unset)"
		}
		got, ok := rows[v.name]
		if !ok {
			t.Errorf("usage lacks %s", v.name)
			continue
		}
		if got.def != def {
			t.Errorf("usage gives %s the default %q, want %q", v.name, got.def, def)
		}
		if got.usage != v.usage {
			t.Errorf("usage gives %s the meaning %q, want %q", v.name, got.usage, v.usage)
		}
	}
	if len(rows) != len(vars) {
		t.Errorf("usage has %d rows for %d variables", len(rows), len(vars))
	}
	for _, name := range []string{"HTTP_ADDR", "ADMIN_ADDR", "DATABASE_URL", "DATABASE_REPLICA_URL", "REDIS_URL", "PROVIDER_URL", "API_KEYS", "SHUTDOWN_DRAIN_DELAY", "SHUTDOWN_TIMEOUT", "LOG_LEVEL"} {
		if _, ok := rows[name]; !ok {
			t.Errorf("usage lacks the contract variable %s", name)
		}
	}
}

func TestLoad_OnlyNamedVariables(t *testing.T) {
	// A healthcheck runs with whatever environment the container has; it
	// must not fail for want of variables it does not use.
	c, err := Load(func(k string) string {
		return map[string]string{"HTTP_ADDR": "127.0.0.1:8000", "LOG_LEVEL": "nonsense"}[k]
	}, "HTTP_ADDR")
	if err != nil {
		t.Fatalf("Load(HTTP_ADDR only): %v", err)
	}
	if c.HTTPAddr != "127.0.0.1:8000" || c.DatabaseURL != "" {
		t.Fatalf("got HTTPAddr=%q DatabaseURL=%q", c.HTTPAddr, c.DatabaseURL)
	}
	if _, err := Load(func(string) string { return "" }, "DATABASE_URL"); err == nil || !strings.Contains(err.Error(), "DATABASE_URL is required") {
		t.Fatalf("a named required variable must still be required, got %v", err)
	}
}
