package testenv

import (
	"context"
	"database/sql"
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
	image := Image("TEST_POSTGRES_IMAGE", DefaultPostgresImage)
	terminate := func(c testcontainers.Container) {
		t.Cleanup(func() {
			if err := testcontainers.TerminateContainer(c); err != nil {
				t.Errorf("testenv: terminate postgres: %v", err)
			}
		})
	}

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
		terminate(primary)
	}
	if err != nil {
		t.Fatalf("testenv: "+dockerHelp, image, err)
	}
	primaryIP, err := primary.ContainerIP(ctx)
	if err != nil {
		t.Fatalf("testenv: primary's address: %v", err)
	}
	primaryURL, err := primary.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		t.Fatalf("testenv: %v", err)
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
		terminate(standby)
	}
	if err != nil {
		t.Fatalf("testenv: standby: %v", err)
	}
	host, err := standby.Host(ctx)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	port, err := standby.MappedPort(ctx, "5432/tcp")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	u, err := url.Parse(primaryURL)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	u.Host = net.JoinHostPort(host, port.Port())
	p := &Pair{PrimaryURL: primaryURL, StandbyURL: u.String(), primary: primary, standby: standby}
	p.WaitReplayed(t)
	return p
}

// WaitReplayed waits until the standby has replayed all the primary has
// written so far.
func (p *Pair) WaitReplayed(t testing.TB) {
	t.Helper()
	primary, standby := openPlain(t, p.PrimaryURL), openPlain(t, p.StandbyURL)
	var lsn string
	if err := primary.QueryRow(`SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatalf("testenv: primary's position: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var caught bool
		err := standby.QueryRow(`SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&caught)
		if err == nil && caught {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: the standby did not replay up to %s within a minute (%v)", lsn, err)
		}
	}
}

// StopPrimary stops the primary's container: its server is gone, as in a
// crash of its machine.
func (p *Pair) StopPrimary(t testing.TB) {
	t.Helper()
	timeout := time.Duration(0)
	if err := p.primary.Stop(context.Background(), &timeout); err != nil {
		t.Fatalf("testenv: stop the primary: %v", err)
	}
}

// Promote makes the standby a primary (pg_promote, waiting for it) and
// returns when it takes writes.
func (p *Pair) Promote(t testing.TB) {
	t.Helper()
	standby := openPlain(t, p.StandbyURL)
	var promoted bool
	if err := standby.QueryRow(`SELECT pg_promote(true, 60)`).Scan(&promoted); err != nil || !promoted {
		t.Fatalf("testenv: promote the standby: %v (promoted %v)", err, promoted)
	}
}

// openPlain opens a small pool of lib/pq's own, independent of the pools
// under test, closed when the test ends.
func openPlain(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	pool, err := sql.Open("postgres", dsn)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	pool.SetMaxOpenConns(2)
	t.Cleanup(func() { pool.Close() })
	return pool
}
