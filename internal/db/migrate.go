package db

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockID is the Postgres advisory lock key that serialises
// migrations. It is our own rather than goose's default, so that another
// goose-managed application sharing the database never waits on ours.
// (It is the FNV-1a 32-bit hash of "payservice-migrations".)
const migrationLockID int64 = 0x2c9d0ed6

// Migrator applies the migrations embedded in the binary. Replicas that start
// together all call Up: one takes the advisory lock and migrates, the others
// wait for the lock and then find nothing left to do.
type Migrator struct {
	provider *goose.Provider
}

// NewMigrator prepares the embedded migrations for pool. It does not connect.
func NewMigrator(pool *sql.DB, log *slog.Logger) (*Migrator, error) {
	files, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("embedded migrations: %w", err)
	}
	// Poll for the lock every second for up to five minutes: long enough
	// for another replica's migration, short enough to surface a stuck one.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("migration locker: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, pool, files,
		goose.WithSessionLocker(locker),
		goose.WithSlog(log),
		goose.WithDisableGlobalRegistry(true), // no package-level state
	)
	if err != nil {
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return &Migrator{provider: provider}, nil
}

// Up applies every pending migration, in order, under the advisory lock.
// It returns the versions it applied (none when the schema is current).
func (m *Migrator) Up(ctx context.Context) ([]int64, error) {
	results, err := m.provider.Up(ctx)
	var partial *goose.PartialError
	if errors.As(err, &partial) {
		return nil, fmt.Errorf("migration %s failed: %w", partial.Failed.Source.Path, partial.Err)
	}
	if err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	applied := make([]int64, len(results))
	for i, r := range results {
		applied[i] = r.Source.Version
	}
	return applied, nil
}

// Pending reports whether the database lacks any embedded migration. A
// replica started with MIGRATE_ON_START=false uses it to wait for a separate
// `server migrate` job.
func (m *Migrator) Pending(ctx context.Context) (bool, error) {
	pending, err := m.provider.HasPending(ctx)
	if err != nil {
		return false, fmt.Errorf("check pending migrations: %w", err)
	}
	return pending, nil
}

// Version returns the schema version this binary expects.
func (m *Migrator) Version() int64 {
	sources := m.provider.ListSources()
	if len(sources) == 0 {
		return 0
	}
	return sources[len(sources)-1].Version
}
