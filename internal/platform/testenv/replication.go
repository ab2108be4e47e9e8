package testenv

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Pair is a Postgres primary and a standby streaming from it, each in a
// container of the test's own, for tests of failover.
type Pair struct {
	// PrimaryURL and StandbyURL reach each server from the test, as the
	// superuser, in the database postgres.
	PrimaryURL, StandbyURL string

	primary, standby testcontainers.Container
}

// pairHBA admits the standby's replication connection besides the usual
// clients.
const pairHBA = `local all all trust
host all all all scram-sha-256
host replication all all scram-sha-256
`

// standbyEntrypoint copies the primary with pg_basebackup, leaving the
// files that make the server a standby of it, then starts the server
// through the image's own entrypoint (which finds data, and initialises
// nothing).
const standbyEntrypoint = `set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
for d in /usr/lib/postgresql/*/bin; do if [ -d "$d" ]; then PATH=$PATH:$d; fi; done
export PATH
mkdir -p "$PGDATA"
until pg_basebackup --host="$PRIMARY_HOST" --username=postgres --pgdata="$PGDATA" \
	--write-recovery-conf --wal-method=stream --checkpoint=fast; do
	find "$PGDATA" -mindepth 1 -delete
	sleep 1
done
exec docker-entrypoint.sh postgres -c fsync=off
`

// NewPair starts a primary and a standby streaming from it, and waits
// until the standby has replayed everything the primary wrote so far.
// Both are terminated when the test ends.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := StartPair(ctx)
	if p != nil {
		t.Cleanup(func() {
			if err := p.Terminate(context.Background()); err != nil {
				t.Errorf("testenv: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// StartPair is NewPair for programs that are not tests (the game day): the
// caller terminates the pair. On error the returned pair, if not nil,
// holds what was started and must still be terminated.
func StartPair(ctx context.Context) (*Pair, error) {
	image := Image("TEST_POSTGRES_IMAGE", DefaultPostgresImage)
	p := &Pair{}
	primary, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
		testcontainers.WithFiles(testcontainers.ContainerFile{
			Reader: strings.NewReader(pairHBA), ContainerFilePath: "/etc/testenv/pg_hba.conf", FileMode: 0o644,
		}),
		testcontainers.WithCmdArgs("-c", "hba_file=/etc/testenv/pg_hba.conf"),
	)
	if primary != nil {
		p.primary = primary
	}
	if err != nil {
		return p, fmt.Errorf(dockerHelp, image, err)
	}
	primaryIP, err := primary.ContainerIP(ctx)
	if err != nil {
		return p, fmt.Errorf("primary's address: %w", err)
	}
	if p.PrimaryURL, err = primary.ConnectionString(ctx, "sslmode=disable"); err != nil {
		return p, err
	}

	standby, err := testcontainers.Run(ctx, image,
		testcontainers.WithEnv(map[string]string{
			"PRIMARY_HOST": primaryIP, "PGPASSWORD": "postgres",
			"POSTGRES_PASSWORD": "postgres", // the entrypoint's contract; unused on copied data
		}),
		testcontainers.WithFiles(testcontainers.ContainerFile{
			Reader: strings.NewReader(standbyEntrypoint), ContainerFilePath: "/etc/testenv/standby.sh", FileMode: 0o755,
		}),
		testcontainers.WithEntrypoint("/bin/sh", "/etc/testenv/standby.sh"),
		testcontainers.WithExposedPorts("5432/tcp"),
		testcontainers.WithWaitStrategy(
			wait.ForLog("database system is ready to accept read-only connections").WithStartupTimeout(2*time.Minute),
			wait.ForListeningPort("5432/tcp"),
		),
	)
	if standby != nil {
		p.standby = standby
	}
	if err != nil {
		return p, fmt.Errorf("standby: %w", err)
	}
	host, err := standby.Host(ctx)
	if err != nil {
		return p, err
	}
	port, err := standby.MappedPort(ctx, "5432/tcp")
	if err != nil {
		return p, err
	}
	u, err := url.Parse(p.PrimaryURL)
	if err != nil {
		return p, err
	}
	u.Host = net.JoinHostPort(host, port.Port())
	p.StandbyURL = u.String()
	return p, p.WaitReplayed(ctx)
}

// Terminate removes both containers.
func (p *Pair) Terminate(ctx context.Context) error {
	var errs []error
	for _, c := range []testcontainers.Container{p.standby, p.primary} {
		if c != nil {
			if err := testcontainers.TerminateContainer(c, testcontainers.StopContext(ctx)); err != nil {
				errs = append(errs, fmt.Errorf("terminate postgres: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// WaitReplayed waits until the standby has replayed all the primary has
// written so far.
func (p *Pair) WaitReplayed(ctx context.Context) error {
	primary, standby, err := p.open()
	if err != nil {
		return err
	}
	defer primary.Close()
	defer standby.Close()
	var lsn string
	if err := primary.QueryRowContext(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return fmt.Errorf("primary's position: %w", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var caught bool
		err := standby.QueryRowContext(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&caught)
		if err == nil && caught {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			why := cmp.Or(err, ctx.Err(), errors.New("still behind"))
			return fmt.Errorf("the standby did not replay up to %s within a minute: %w", lsn, why)
		}
	}
}

// MakeSynchronous makes the primary wait, before it acknowledges a commit,
// until the standby has the commit on disk (synchronous_standby_names =
// '*'). Without it, a commit acknowledged just before the primary dies may
// be missing on the promoted standby. It is set after the standby is
// running: set at start, the primary's own start-up writes would wait for
// a standby that does not exist yet. The setting lives in the primary's
// data directory only, so the standby, once promoted, does not wait for a
// standby of its own.
func (p *Pair) MakeSynchronous(ctx context.Context) error {
	primary, err := sql.Open("postgres", p.PrimaryURL)
	if err != nil {
		return err
	}
	defer primary.Close()
	for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '*'`, `SELECT pg_reload_conf()`} {
		if _, err := primary.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("make replication synchronous: %s: %w", q, err)
		}
	}
	return nil
}

// StopPrimary stops the primary's container at once (SIGKILL): its server
// is gone, as in a crash of its machine.
func (p *Pair) StopPrimary(ctx context.Context) error {
	timeout := time.Duration(0)
	if err := p.primary.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("stop the primary: %w", err)
	}
	return nil
}

// Promote makes the standby a primary (pg_promote, waiting for it) and
// returns when it takes writes.
func (p *Pair) Promote(ctx context.Context) error {
	standby, err := sql.Open("postgres", p.StandbyURL)
	if err != nil {
		return err
	}
	defer standby.Close()
	var promoted bool
	if err := standby.QueryRowContext(ctx, `SELECT pg_promote(true, 60)`).Scan(&promoted); err != nil {
		return fmt.Errorf("promote the standby: %w", err)
	}
	if !promoted {
		return errors.New("promote the standby: pg_promote returned false")
	}
	return nil
}

// open opens a small pool of lib/pq's own on each server, independent of
// the pools under test.
func (p *Pair) open() (primary, standby *sql.DB, err error) {
	if primary, err = sql.Open("postgres", p.PrimaryURL); err != nil {
		return nil, nil, err
	}
	if standby, err = sql.Open("postgres", p.StandbyURL); err != nil {
		primary.Close()
		return nil, nil, err
	}
	primary.SetMaxOpenConns(2)
	standby.SetMaxOpenConns(2)
	return primary, standby, nil
}
