package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// Env is everything a game day runs against, all on this machine: a
// Postgres primary with a synchronous streaming standby, Redis (containers,
// through testcontainers), the fake provider behind a capacity limit (in
// this process), a fault-injecting proxy in front of each of them
// (toxiproxy, in this process), and two instances of the real server
// binary behind a client-side balancer.
//
// The instances reach every dependency only through its proxy, so a fault
// is a toxic on a proxy, a stopped proxy, or a real kill of the container
// or process. The game day itself (setup, audit) talks to the servers
// directly.
type Env struct {
	log *slog.Logger
	dir string // logs and the server binary

	pair         *testenv.Pair
	redis        *testenv.Redis
	Provider     *fakeprovider.Provider
	Capacity     *capacity
	provider     *http.Server
	providerAddr string

	toxics  *toxiproxy.ApiServer
	proxies map[string]*toxiproxy.Proxy

	bin      string
	base     map[string]string // the instances' configuration, before a scenario's
	current  map[string]string // what they run with
	apps     []*app
	Balancer *balancer

	promoted bool // the standby is the primary now
}

// The proxies, by the dependency they stand in front of.
const (
	proxyPrimary  = "postgres-primary"
	proxyStandby  = "postgres-standby"
	proxyRedis    = "redis"
	proxyProvider = "provider"
)

// apiKey is the one client the load speaks as.
const apiKey = "gameday_key"

// startEnv starts everything. On error, what was started is still closed
// by Close, which the caller defers before checking the error.
func startEnv(ctx context.Context, dir string, base map[string]string, log *slog.Logger) (*Env, error) {
	e := &Env{log: log, dir: dir, proxies: map[string]*toxiproxy.Proxy{}}
	var err error
	log.Info("building the server binary")
	if e.bin, err = buildServer(ctx, dir); err != nil {
		return e, err
	}
	log.Info("starting Postgres (primary and standby) and Redis")
	if e.pair, err = testenv.StartPair(ctx); err != nil {
		return e, fmt.Errorf("postgres: %w", err)
	}
	if err := e.pair.MakeSynchronous(ctx); err != nil {
		return e, err
	}
	if e.redis, err = testenv.StartRedis(ctx); err != nil {
		return e, fmt.Errorf("redis: %w", err)
	}
	if err := e.startProvider(); err != nil {
		return e, err
	}
	if err := e.startProxies(); err != nil {
		return e, err
	}
	e.base = e.configuration(base)
	e.Balancer = newBalancer()
	for _, name := range []string{"a", "b"} {
		a := &app{name: name, bin: e.bin, dir: dir, log: log}
		e.apps = append(e.apps, a)
		e.Balancer.add(a)
	}
	if err := e.Configure(ctx, nil); err != nil {
		return e, err
	}
	return e, nil
}

// buildServer builds cmd/server into dir, from the module this command is
// run in.
func buildServer(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "server")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/server")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/server (run the game day from the repository's root): %w\n%s", err, out)
	}
	return bin, nil
}

func (e *Env) startProvider() error {
	e.Provider = fakeprovider.New()
	e.Capacity = newCapacity(e.Provider)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.providerAddr = ln.Addr().String()
	e.provider = &http.Server{Handler: e.Capacity, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.provider.Serve(ln) }() // ends when Close shuts it down
	return nil
}

// startProxies puts a proxy in front of each dependency, each on a port of
// its own on loopback.
func (e *Env) startProxies() error {
	logger := zerolog.Nop()
	e.toxics = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), logger)
	primary, err := hostPort(e.pair.PrimaryURL)
	if err != nil {
		return err
	}
	standby, err := hostPort(e.pair.StandbyURL)
	if err != nil {
		return err
	}
	redisAddr, err := hostPort(e.redis.URL())
	if err != nil {
		return err
	}
	upstreams := map[string]string{
		proxyPrimary: primary, proxyStandby: standby, proxyRedis: redisAddr,
		proxyProvider: e.providerAddr,
	}
	for name, upstream := range upstreams {
		p := toxiproxy.NewProxy(e.toxics, name, "127.0.0.1:0", upstream)
		if err := p.Start(); err != nil {
			return fmt.Errorf("proxy %s: %w", name, err)
		}
		e.proxies[name] = p
	}
	return nil
}

// configuration is the instances' environment: every dependency through
// its proxy, then the game day's settings, then the caller's.
func (e *Env) configuration(extra map[string]string) map[string]string {
	pg := func(names ...string) string {
		var hosts []string
		for _, n := range names {
			hosts = append(hosts, e.proxies[n].Listen)
		}
		return "postgres://postgres:postgres@" + strings.Join(hosts, ",") + "/postgres?sslmode=disable"
	}
	env := map[string]string{
		"DATABASE_URL":         pg(proxyPrimary, proxyStandby) + "&target_session_attrs=read-write&connect_timeout=1",
		"DATABASE_REPLICA_URL": pg(proxyStandby) + "&connect_timeout=1",
		"REDIS_URL":            "redis://" + e.proxies[proxyRedis].Listen + "/0",
		"PROVIDER_URL":         "http://" + e.proxies[proxyProvider].Listen,
		"API_KEYS":             "gameday:" + apiKey,
		"LOG_FORMAT":           "json",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// hostPort is the host:port of a URL.
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// Primary opens a pool on whichever server is the primary now, directly
// (not through a proxy): the game day's own view, for the audit.
func (e *Env) Primary() (*sql.DB, error) {
	dsn := e.pair.PrimaryURL
	if e.promoted {
		dsn = e.pair.StandbyURL
	}
	return sql.Open("postgres", dsn)
}

// Standby opens a pool on the standby, directly.
func (e *Env) Standby() (*sql.DB, error) { return sql.Open("postgres", e.pair.StandbyURL) }

// Proxy returns the proxy in front of a dependency.
func (e *Env) Proxy(name string) *toxiproxy.Proxy { return e.proxies[name] }

// Configure makes sure both instances run with the base configuration
// plus extra, restarting them when it differs from what they run with.
func (e *Env) Configure(ctx context.Context, extra map[string]string) error {
	env := e.configuration(mergeEnv(e.base, extra))
	if maps.Equal(env, e.current) {
		return nil
	}
	return e.restart(ctx, env)
}

// restart (re)starts both instances with env, one after the other, each
// waited for until ready.
func (e *Env) restart(ctx context.Context, env map[string]string) error {
	e.current = env
	for _, a := range e.apps {
		if err := a.stop(ctx, false); err != nil {
			return err
		}
		if err := a.start(ctx, env); err != nil {
			return err
		}
	}
	return nil
}

// Apps are the two instances.
func (e *Env) Apps() []*app { return e.apps }

// KillPrimary stops the primary's container at once.
func (e *Env) KillPrimary(ctx context.Context) error { return e.pair.StopPrimary(ctx) }

// Promote promotes the standby; from then on it is the primary.
func (e *Env) Promote(ctx context.Context) error {
	if err := e.pair.Promote(ctx); err != nil {
		return err
	}
	e.promoted = true
	return nil
}

// StopRedis and StartRedis kill Redis's container and start it again,
// empty, on the same address.
func (e *Env) StopRedis(ctx context.Context) error  { return e.redis.Stop(ctx) }
func (e *Env) StartRedis(ctx context.Context) error { return e.redis.Start(ctx) }

// Describe says what was started and how it is configured, for the
// report.
func (e *Env) Describe(p Phases) []string {
	var cfg []string
	for _, k := range sortedKeys(e.base) {
		if !strings.HasSuffix(k, "_URL") && k != "API_KEYS" {
			cfg = append(cfg, k+"="+e.base[k])
		}
	}
	return []string{
		"Postgres: a primary and a streaming standby (pg_basebackup), replication synchronous (synchronous_standby_names = '*'), containers of " + testenv.Image("TEST_POSTGRES_IMAGE", testenv.DefaultPostgresImage),
		"Redis: a container of " + testenv.Image("TEST_REDIS_IMAGE", testenv.DefaultRedisImage),
		fmt.Sprintf("Provider: the fake provider in the game day's process, working on %d calls at once, %v each (%d a second)", providerSlots, providerHold, int(float64(providerSlots)/providerHold.Seconds())),
		"Proxies: toxiproxy (embedded) in front of the Postgres primary, the standby, Redis and the provider; the instances reach them only through it",
		"Instances: 2 processes of the server binary (go build ./cmd/server), DATABASE_URL listing both Postgres proxies with target_session_attrs=read-write, reads on the standby",
		"Balancer: round robin over the instances whose readiness said ready at the last probe (every 500 ms), at the address probed; to every instance it has an address for when none is ready",
		fmt.Sprintf("Load: open model, %d requests a second (6 in 10 new payments, 1 a duplicate of an answered request, 1 a refund, 2 reads: of the newest payment, or of one refunded over a second ago); a POST without an answer or with a 5xx is sent again with its key up to 3 times, never sooner than Retry-After", baseRate),
		fmt.Sprintf("Each run: %v steady, %v fault, %v recovery; then the reconciler settles and the money is audited", p.Steady, p.Fault, p.Recovery),
		"Instance configuration: " + strings.Join(cfg, " "),
	}
}

// FlushRedis empties Redis, as a failover to an empty replica would.
func (e *Env) FlushRedis(ctx context.Context) error {
	opts, err := redis.ParseURL(e.redis.URL())
	if err != nil {
		return err
	}
	c := redis.NewClient(opts)
	defer c.Close()
	return c.FlushAll(ctx).Err()
}

// Close stops everything that was started, in reverse order, and reports
// what could not be stopped.
func (e *Env) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for _, a := range e.apps {
		errs = append(errs, a.stop(ctx, true))
	}
	for _, p := range e.proxies {
		p.Stop()
	}
	if e.provider != nil {
		errs = append(errs, e.provider.Close())
	}
	if e.redis != nil {
		errs = append(errs, e.redis.Terminate(ctx))
	}
	if e.pair != nil {
		errs = append(errs, e.pair.Terminate(ctx))
	}
	return errors.Join(errs...)
}

// mergeEnv merges environments, the later winning.
func mergeEnv(envs ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range envs {
		maps.Copy(out, m)
	}
	return out
}
