// Package postgres is the platform's Postgres layer: connection pools with
// explicit limits, migration streams applied under an advisory lock, and
// leader election with a session lock.
//
// It uses database/sql with lib/pq rather than a driver-specific pool: the
// standard interfaces are what most readers know, and pool limits, lifetimes
// and statistics (exported as metrics) are all on *sql.DB. The cost is that
// every query is plain SQL with positional arguments, which is also the
// point: the statements that guarantee at-most-once work are short enough to
// read in full.
package postgres

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"slices"
	"strings"
	"time"

	"github.com/lib/pq"
	"go.opentelemetry.io/otel/trace"

	"github.com/resiliencekit/payservice/internal/platform/config"
)

// PoolConfig bounds one connection pool. Unbounded pools are how a traffic
// spike becomes a database outage: every replica of the service opens
// connections until Postgres refuses them all.
type PoolConfig struct {
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
	ConnMaxIdleTime time.Duration
}

// Open returns a pool for the Postgres URL. It does not connect: the first
// query does, so a service can start, report not-ready, and wait for its
// database instead of crashing in a restart loop.
//
// Unless the URL says otherwise, the pool sends each statement with
// arguments in one round trip (lib/pq's binary_parameters): by default
// lib/pq spends two, one to prepare the statement and one to run it,
// which on a write path of two statements is two round trips too many.
// The price is lib/pq's rule for that mode: a []byte argument is sent
// as binary data, right for bytea and text columns but refused by
// Postgres for jsonb and others. Pass JSON as a string.
//
// For failover, give the URL every host and target_session_attrs=read-write
// (postgres://u:p@pg-a:5432,pg-b:5432/db?target_session_attrs=read-write):
// new connections then go to whichever host takes writes, and a connection
// that meets a demoted or departing server is discarded, not reused.
func Open(url string, cfg PoolConfig) (*sql.DB, error) { return open(url, cfg, nil) }

// open is Open, recording spans with tp when it is not nil (tracing.go).
func open(url string, cfg PoolConfig, tp trace.TracerProvider) (*sql.DB, error) {
	pc, err := pq.NewConfig(multiHostURL(url))
	if err != nil {
		// Not err: lib/pq may quote the URL, and URLs carry passwords.
		return nil, errors.New("open postgres pool: the URL does not parse as a Postgres connection string")
	}
	if !strings.Contains(url, "binary_parameters") {
		pc.BinaryParameters = true
	}
	connector, err := pq.NewConnectorConfig(pc)
	if err != nil {
		return nil, errors.New("open postgres pool: the URL's settings are not valid")
	}
	c := failoverConnector{Connector: connector}
	if tp != nil {
		c.tracer = tp.Tracer(tracerName)
	}
	pool := sql.OpenDB(c)
	pool.SetMaxOpenConns(cfg.MaxOpenConns)
	pool.SetMaxIdleConns(cfg.MaxIdleConns)
	pool.SetConnMaxLifetime(cfg.ConnMaxLifetime)
	pool.SetConnMaxIdleTime(cfg.ConnMaxIdleTime)
	return pool, nil
}

// Ping checks that the pool can reach Postgres within the timeout.
func Ping(ctx context.Context, pool *sql.DB, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return pool.PingContext(ctx)
}

// Config says where a service's Postgres is and how its pools are bounded.
type Config struct {
	URL        string // the primary
	ReplicaURL string // optional: a read replica for reads that may lag
	// ReplicaMaxLag bounds how stale a replica read may be: beyond it, or
	// while the replica's position is unknown, reads go to the primary
	// (see Topology).
	ReplicaMaxLag time.Duration
	Pool          PoolConfig
	// MigrateOnStart applies migrations at start-up; false waits for a
	// separate migration job to have applied them.
	MigrateOnStart bool
}

// DefaultConfig returns pools of 20 connections, all kept when idle (below
// that, every burst closes and reopens connections), recycled every 30
// minutes so failovers and DNS changes are picked up.
func DefaultConfig() Config {
	return Config{
		Pool:           PoolConfig{MaxOpenConns: 20, MaxIdleConns: 20, ConnMaxLifetime: 30 * time.Minute, ConnMaxIdleTime: 5 * time.Minute},
		ReplicaMaxLag:  time.Second,
		MigrateOnStart: true,
	}
}

var schemes = []string{"postgres", "postgresql"}

// Bind declares the variables: DATABASE_URL, DATABASE_REPLICA_URL,
// DATABASE_REPLICA_MAX_LAG, DB_* and MIGRATE_ON_START, after b's prefix.
func (c *Config) Bind(b *config.Binder) {
	b.URL("DATABASE_URL", &c.URL, schemes, "primary Postgres URL, e.g. postgres://user:pass@host:5432/db?sslmode=disable; for failover list every host and add target_session_attrs=read-write").Required()
	b.URL("DATABASE_REPLICA_URL", &c.ReplicaURL, schemes, "optional read-replica Postgres URL for reads; they fall back to the primary when it fails")
	b.Duration("DATABASE_REPLICA_MAX_LAG", &c.ReplicaMaxLag, "reads go to the replica only while it is shown to hold every commit the primary made until this long ago (probed every 250ms); else to the primary")
	b.Int("DB_MAX_OPEN_CONNS", &c.Pool.MaxOpenConns, 2, 1000, "maximum open connections per pool, at least 2 (a leader holds one); keep replicas × this below Postgres max_connections")
	b.Int("DB_MAX_IDLE_CONNS", &c.Pool.MaxIdleConns, 0, 1000, "idle connections kept per pool (≤ DB_MAX_OPEN_CONNS); below it, every burst closes and reopens connections")
	b.Duration("DB_CONN_MAX_LIFETIME", &c.Pool.ConnMaxLifetime, "recycle connections after this long, so failovers and DNS changes are picked up")
	b.Duration("DB_CONN_MAX_IDLE_TIME", &c.Pool.ConnMaxIdleTime, "close connections idle for this long")
	b.Bool("MIGRATE_ON_START", &c.MigrateOnStart, "apply migrations at start-up under an advisory lock; false waits for `server migrate` to have run")
}

// Check reports the settings that contradict each other.
func (c Config) Check() []error {
	if c.Pool.MaxIdleConns > c.Pool.MaxOpenConns {
		return []error{fmt.Errorf("DB_MAX_IDLE_CONNS=%d must not exceed DB_MAX_OPEN_CONNS=%d", c.Pool.MaxIdleConns, c.Pool.MaxOpenConns)}
	}
	return nil
}

// multiHostURL rewrites a URL with several host:port pairs
// (postgres://u:p@pg-a:5432,pg-b:5433/db), as libpq accepts it, into the
// keyword form lib/pq reads correctly (host=pg-a,pg-b port=5432,5433 ...):
// given the URL, lib/pq takes the last ":port" for every host, and cannot
// parse an IPv6 host in the list at all. Unless the URL sets it, it adds
// connect_timeout=2 (seconds), so that a host that does not answer costs a
// new connection 2 s, not the OS's minutes, before the next is tried.
// Anything else is returned as it is.
func multiHostURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || (scheme != "postgres" && scheme != "postgresql") {
		return raw
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hostlist := "", authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userinfo, hostlist = authority[:at], authority[at+1:]
	}
	if !strings.Contains(hostlist, ",") {
		return raw
	}
	// The rest (user, password, database, parameters) as a URL with one
	// host parses as usual.
	if userinfo != "" {
		userinfo += "@"
	}
	u, err := neturl.Parse(scheme + "://" + userinfo + "placeholder" + tail)
	if err != nil {
		return raw // lib/pq will say what is wrong
	}
	var hosts, ports []string
	for _, hp := range strings.Split(hostlist, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil { // no port: the default
			host, port = strings.Trim(hp, "[]"), ""
		}
		hosts, ports = append(hosts, host), append(ports, port)
	}
	quote := strings.NewReplacer(`'`, `\'`, `\`, `\\`).Replace
	q := u.Query()
	kv := []string{"host='" + quote(strings.Join(hosts, ",")) + "'"}
	if slices.ContainsFunc(ports, func(p string) bool { return p != "" }) {
		// lib/pq fills in the default for a missing port only after the
		// first: spell each out, from ?port= or libpq's 5432.
		def := cmp.Or(q.Get("port"), "5432")
		for i, p := range ports {
			ports[i] = cmp.Or(p, def)
		}
		q.Del("port")
		kv = append(kv, "port='"+quote(strings.Join(ports, ","))+"'")
	}
	// Hosts are tried in order, each for as long as the OS lets a connect
	// hang without connect_timeout: a black-holed former primary first in
	// the list would hold every new connection for minutes.
	if !q.Has("connect_timeout") {
		q.Set("connect_timeout", "2")
	}
	if u.User != nil {
		kv = append(kv, "user='"+quote(u.User.Username())+"'")
		if pw, ok := u.User.Password(); ok {
			kv = append(kv, "password='"+quote(pw)+"'")
		}
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		kv = append(kv, "dbname='"+quote(db)+"'")
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		kv = append(kv, k+"='"+quote(q.Get(k))+"'")
	}
	return strings.Join(kv, " ")
}
