package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// OpenPools opens the primary pool and, if configured, the replica's, and
// exports their statistics as metrics (go_sql_*, labelled primary and
// replica). replica is nil without a replica URL.
func OpenPools(c Config, reg prometheus.Registerer) (primary, replica *sql.DB, err error) {
	primary, err = Open(c.URL, c.Pool)
	if err != nil {
		return nil, nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	reg.MustRegister(collectors.NewDBStatsCollector(primary, "primary"))
	if c.ReplicaURL == "" {
		return primary, nil, nil
	}
	replica, err = Open(c.ReplicaURL, c.Pool)
	if err != nil {
		primary.Close()
		return nil, nil, fmt.Errorf("DATABASE_REPLICA_URL: %w", err)
	}
	reg.MustRegister(collectors.NewDBStatsCollector(replica, "replica"))
	return primary, replica, nil
}

// PrepareSchema waits for Postgres, then applies the migrations (when
// migrate is true) or waits for a separate migration job to have applied
// them. It returns once the schema is current, or ctx's error.
func PrepareSchema(ctx context.Context, pool *sql.DB, migrate bool, log *slog.Logger, streams ...Migrations) error {
	migrator, err := NewMigrator(pool, log, streams...)
	if err != nil {
		return err
	}
	err = retryUntil(ctx, log, "postgres not reachable yet", func(ctx context.Context) error {
		return Ping(ctx, pool, 2*time.Second)
	})
	if err != nil {
		return err
	}
	if !migrate {
		return retryUntil(ctx, log, "waiting for migrations (MIGRATE_ON_START=false)", func(ctx context.Context) error {
			pending, err := migrator.Pending(ctx)
			if err == nil && pending {
				err = fmt.Errorf("schema is older than versions %v", migrator.Versions())
			}
			return err
		})
	}
	return migrator.UpAndLog(ctx, log)
}

// UpAndLog applies pending migrations and says what it did.
func (m *Migrator) UpAndLog(ctx context.Context, log *slog.Logger) error {
	applied, err := m.Up(ctx)
	if err != nil {
		return err
	}
	log.Info("migrations applied", "applied", applied, "versions", m.Versions())
	return nil
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
