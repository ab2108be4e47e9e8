package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"
)

// Migrations is one stream of goose SQL migrations: a part of the service
// that owns tables (the platform's idempotency keys, a domain's own) ships
// its migrations as one, numbered on its own and recorded in its own
// version table. Streams are applied in the order given, so a later one
// may build on an earlier one's tables.
type Migrations struct {
	// Files holds the *.sql migrations at its root.
	Files fs.FS
	// Table records which of them are applied; unique per stream.
	Table string
}

// DefaultTable is goose's own version table: the stream of a service that
// had only one keeps using it.
const DefaultTable = "goose_db_version"

// MigrationLockID is the Postgres advisory lock key that serialises
// migrations. It is our own rather than goose's default, so that another
// goose-managed application sharing the database never waits on ours.
// (It is the FNV-1a 32-bit hash of "payservice-migrations".)
const MigrationLockID int64 = 0x2c9d0ed6

// Migrator applies migration streams. Replicas that start together all
// call Up: one takes the advisory lock and migrates, the others wait for
// the lock and then find nothing left to do.
type Migrator struct {
	streams []*goose.Provider
}

// NewMigrator prepares streams for pool. It does not connect.
func NewMigrator(pool *sql.DB, log *slog.Logger, streams ...Migrations) (*Migrator, error) {
	m := &Migrator{}
	for _, s := range streams {
		// Poll for the lock every second for up to five minutes: long
		// enough for another replica's migration, short enough to surface
		// a stuck one.
		locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(MigrationLockID), lock.WithLockTimeout(1, 300))
		if err != nil {
			return nil, fmt.Errorf("migration locker: %w", err)
		}
		store, err := database.NewStore(database.DialectPostgres, s.Table)
		if err != nil {
			return nil, fmt.Errorf("migrations %s: %w", s.Table, err)
		}
		provider, err := goose.NewProvider("", pool, s.Files,
			goose.WithStore(store),
			goose.WithSessionLocker(locker),
			goose.WithSlog(log),
			goose.WithDisableGlobalRegistry(true), // no package-level state
		)
		if err != nil {
			return nil, fmt.Errorf("migrations %s: %w", s.Table, err)
		}
		m.streams = append(m.streams, provider)
	}
	return m, nil
}

// Up applies every pending migration of every stream, in order, under the
// advisory lock. It returns how many it applied (none when the schema is
// current).
func (m *Migrator) Up(ctx context.Context) (int, error) {
	applied := 0
	for _, p := range m.streams {
		results, err := p.Up(ctx)
		var partial *goose.PartialError
		if errors.As(err, &partial) {
			return applied, fmt.Errorf("migration %s failed: %w", partial.Failed.Source.Path, partial.Err)
		}
		if err != nil {
			return applied, fmt.Errorf("apply migrations: %w", err)
		}
		applied += len(results)
	}
	return applied, nil
}

// Pending reports whether the database lacks any migration. A replica
// started with MIGRATE_ON_START=false uses it to wait for a separate
// `server migrate` job.
func (m *Migrator) Pending(ctx context.Context) (bool, error) {
	for _, p := range m.streams {
		pending, err := p.HasPending(ctx)
		if err != nil {
			return false, fmt.Errorf("check pending migrations: %w", err)
		}
		if pending {
			return true, nil
		}
	}
	return false, nil
}

// Versions returns, per stream, the schema version this binary expects.
func (m *Migrator) Versions() []int64 {
	versions := make([]int64, len(m.streams))
	for i, p := range m.streams {
		if sources := p.ListSources(); len(sources) > 0 {
			versions[i] = sources[len(sources)-1].Version
		}
	}
	return versions
}
