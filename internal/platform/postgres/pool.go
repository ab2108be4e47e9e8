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
	"context"
	"database/sql"
	"fmt"
	"time"

	_ "github.com/lib/pq" // registers the "postgres" driver
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
func Open(url string, cfg PoolConfig) (*sql.DB, error) {
	pool, err := sql.Open("postgres", url)
	if err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
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
