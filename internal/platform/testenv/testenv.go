// Package testenv gives integration tests real Postgres and Redis, started
// through testcontainers-go once per test binary and shared by its tests.
//
// Each test gets its own database, cloned in milliseconds from a template
// database migrated once per set of migration streams (CREATE DATABASE …
// TEMPLATE), and its own Redis
// logical database, so tests stay isolated and can run in parallel without
// paying a container start each. Tests that stop or restart Redis get a
// dedicated container (NewRedis).
//
// Images come from TEST_POSTGRES_IMAGE and TEST_REDIS_IMAGE.
// Without Docker the tests fail — never skip — with a message saying what
// to install: a green run must mean the integration tests ran.
//
// Use it from a package's TestMain, so the containers stop when the tests
// end:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
package testenv

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// Default images, used when TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE are unset.
const (
	DefaultPostgresImage = "postgres:17-alpine"
	DefaultRedisImage    = "redis:7-alpine"
)

const dockerHelp = `integration tests need a Docker engine and the images %s.
Install Docker (https://docs.docker.com/engine/install/) and start it, or point
TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE at images you have. Without a registry,
.ci/run builds stand-in images and sets TESTCONTAINERS_RYUK_DISABLED=true and
TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1. Cause: %v`

// env is the state shared by the tests of one binary. It is the one
// package-level variable in the project: containers are per process by
// nature, and starting them per test would cost seconds each.
var env struct {
	mu         sync.Mutex
	containers []testcontainers.Container

	pgOnce      sync.Once
	pgErr       error
	pgAdmin     *url.URL // URL of the server's maintenance database
	pgCloneMu   sync.Mutex
	pgTemplates map[string]string // migrated template database by streams; guarded by pgCloneMu

	redisOnce sync.Once
	redisErr  error
	redisURL  *url.URL
	redisDBs  chan int // free logical databases
}

// Main runs the package's tests, then terminates the containers they
// started. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	env.mu.Lock()
	for _, c := range env.containers {
		if err := testcontainers.TerminateContainer(c); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: terminate container: %v\n", err)
		}
	}
	env.mu.Unlock()
	os.Exit(code)
}

func track(c testcontainers.Container) {
	env.mu.Lock()
	defer env.mu.Unlock()
	env.containers = append(env.containers, c)
}

// Image returns the image for a dependency from its variable, or the
// default.
func Image(variable, def string) string { return cmp.Or(os.Getenv(variable), def) }

func startPostgres() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	image := Image("TEST_POSTGRES_IMAGE", DefaultPostgresImage)
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if c != nil {
		track(c)
	}
	if err != nil {
		env.pgErr = fmt.Errorf(dockerHelp, image, err)
		return
	}
	dsn, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		env.pgErr = fmt.Errorf("postgres connection string: %w", err)
		return
	}
	env.pgAdmin, env.pgErr = url.Parse(dsn)
	env.pgTemplates = map[string]string{}
}

// template returns the name of a database migrated with streams, creating
// it on first use. The caller holds env.pgCloneMu.
func template(streams []postgres.Migrations) (string, error) {
	var id strings.Builder
	for _, s := range streams {
		id.WriteString(s.Table + "/")
	}
	if name, ok := env.pgTemplates[id.String()]; ok {
		return name, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := "template_" + randomHex(8)
	if err := execAdmin(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	pool, err := sql.Open("postgres", databaseURL(name))
	if err != nil {
		return "", err
	}
	defer pool.Close() // CREATE DATABASE … TEMPLATE needs it unused
	migrator, err := postgres.NewMigrator(pool, slog.New(slog.NewTextHandler(io.Discard, nil)), streams...)
	if err == nil {
		_, err = migrator.Up(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("migrate template database: %w", err)
	}
	env.pgTemplates[id.String()] = name
	return name, nil
}

// databaseURL is the URL of the named database on the shared server.
func databaseURL(name string) string {
	u := *env.pgAdmin
	u.Path = "/" + name
	return u.String()
}

func execAdmin(ctx context.Context, stmt string) error {
	pool, err := sql.Open("postgres", env.pgAdmin.String())
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("%s: %w", stmt, err)
	}
	return nil
}

// NewDatabase returns the URL of a new database, migrated with streams,
// that only this test uses. It is dropped when the test ends.
func NewDatabase(t testing.TB, streams ...postgres.Migrations) string {
	t.Helper()
	return newDatabase(t, streams)
}

// NewEmptyDatabase returns the URL of a new database without any schema,
// for tests of migrations and start-up.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return newDatabase(t, nil)
}

// NewDatabaseLater returns the URL of a database that does not exist yet,
// and a function that creates it, empty. Tests of start-up use it to hold a
// service in "waiting for Postgres" for as long as they like.
func NewDatabaseLater(t testing.TB) (url string, create func()) {
	t.Helper()
	env.pgOnce.Do(startPostgres)
	if env.pgErr != nil {
		t.Fatalf("testenv: %v", env.pgErr)
	}
	name := "test_" + randomHex(8)
	create = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execAdmin(ctx, "CREATE DATABASE "+name); err != nil {
			t.Errorf("testenv: %v", err)
		}
	}
	t.Cleanup(func() { dropDatabase(t, name) })
	return databaseURL(name), create
}

func newDatabase(t testing.TB, streams []postgres.Migrations) string {
	t.Helper()
	env.pgOnce.Do(startPostgres)
	if env.pgErr != nil {
		t.Fatalf("testenv: %v", env.pgErr)
	}
	name := "test_" + randomHex(8)
	stmt := "CREATE DATABASE " + name
	if len(streams) > 0 {
		// Clones of one template must not overlap: Postgres refuses to
		// copy a database another session is copying from.
		env.pgCloneMu.Lock()
		defer env.pgCloneMu.Unlock()
		tmpl, err := template(streams)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		stmt += " TEMPLATE " + tmpl
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := execAdmin(ctx, stmt); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { dropDatabase(t, name) })
	return databaseURL(name)
}

func dropDatabase(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// FORCE closes connections a test left open.
	if err := execAdmin(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Logf("testenv: drop test database: %v", err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewPostgresServer starts a Postgres server of the test's own, with extra
// server settings (say "-c", "default_transaction_read_only=on"), and
// returns its admin URL. It is terminated when the test ends. Tests of
// failover use it where the shared server cannot play the part.
func NewPostgresServer(t testing.TB, serverArgs ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	image := Image("TEST_POSTGRES_IMAGE", DefaultPostgresImage)
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
		testcontainers.WithCmdArgs(serverArgs...),
	)
	if c != nil {
		t.Cleanup(func() {
			if err := testcontainers.TerminateContainer(c); err != nil {
				t.Errorf("testenv: terminate postgres: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("testenv: "+dockerHelp, image, err)
	}
	dsn, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		t.Fatalf("testenv: postgres connection string: %v", err)
	}
	return dsn
}
