package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
)

// OpenPools opens the primary pool and, if configured, the replica's, and
// exports their statistics as metrics (go_sql_*, labelled primary and
// replica). replica is nil without a replica URL. With tp not nil, the
// statements run within a recording span get spans of their own.
func OpenPools(c Config, tp trace.TracerProvider, reg prometheus.Registerer) (primary, replica *sql.DB, err error) {
	primary, err = open(c.URL, c.Pool, tp)
	if err != nil {
		return nil, nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	reg.MustRegister(collectors.NewDBStatsCollector(primary, "primary"))
	if c.ReplicaURL == "" {
		return primary, nil, nil
	}
	replica, err = open(c.ReplicaURL, c.Pool, tp)
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
	// The ping can pass on a connection made a moment earlier while the
	// next one is refused: a Postgres coming back whose Service has no
	// ready endpoint yet. A migration cut by a lost connection is rolled
	// back with its transaction and its advisory lock: apply it again.
	// Anything else (a failing migration) ends the start-up.
	return retryUntil(ctx, log, "migrations interrupted: connection to postgres lost", func(ctx context.Context) error {
		err := migrator.UpAndLog(ctx, log)
		if err != nil && !lostConnection(err) {
			return final{err}
		}
		return err
	})
}

// lostConnection reports whether err is a connection that failed or was
// cut, rather than an error Postgres answered: a dial refused or timed
// out, a reset, an unexpected end of stream, a connection the driver gave
// up on, or a server shutting down or still starting (57P01–57P03).
func lostConnection(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || Disqualifies(err)
}

// final marks an error retryUntil must not retry.
type final struct{ err error }

func (f final) Error() string { return f.err.Error() }

// UpAndLog applies pending migrations and says what it did.
func (m *Migrator) UpAndLog(ctx context.Context, log *slog.Logger) error {
	applied, err := m.Up(ctx)
	if err != nil {
		return err
	}
	log.Info("migrations applied", "applied", applied, "versions", m.Versions())
	return nil
}

// retryUntil calls f until it succeeds, fails with a final error, or ctx
// ends, backing off from 100ms to 5s with full jitter and logging each
// failure. The jitter keeps
// replicas that started together, waiting for the same database, from
// knocking on it in lockstep when it comes back.
func retryUntil(ctx context.Context, log *slog.Logger, msg string, f func(context.Context) error) error {
	ceiling := 100 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if fin := (final{}); errors.As(err, &fin) {
			return fin.err
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
