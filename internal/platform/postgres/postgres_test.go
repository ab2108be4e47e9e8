package postgres_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t *testing.T, url string) *sql.DB {
	t.Helper()
	pool, err := postgres.Open(url, postgres.PoolConfig{MaxOpenConns: 10, MaxIdleConns: 5, ConnMaxLifetime: time.Minute, ConnMaxIdleTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool
}

// Two streams, as a platform part and a domain would ship them: the
// second builds on the first's table.
var streams = []postgres.Migrations{
	{Table: "goose_platform_version", Files: fstest.MapFS{
		"00001_a.sql": {Data: []byte("-- +goose Up\nCREATE TABLE a (id int PRIMARY KEY);\n-- +goose Down\nDROP TABLE a;\n")},
		"00002_b.sql": {Data: []byte("-- +goose Up\nCREATE TABLE b (id int PRIMARY KEY);\n-- +goose Down\nDROP TABLE b;\n")},
	}},
	{Table: postgres.DefaultTable, Files: fstest.MapFS{
		"00001_c.sql": {Data: []byte("-- +goose Up\nCREATE TABLE c (id int PRIMARY KEY REFERENCES a);\n-- +goose Down\nDROP TABLE c;\n")},
	}},
}

func TestMigrator_ConcurrentUpAppliesEachMigrationOnce(t *testing.T) {
	url := testenv.NewEmptyDatabase(t)
	ctx := context.Background()

	// Several replicas starting at once, each with its own pool.
	const replicas = 4
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	applied := make([]int, replicas)
	for i := range replicas {
		wg.Go(func() {
			m, err := postgres.NewMigrator(open(t, url), discard(), streams...)
			if err != nil {
				errs[i] = err
				return
			}
			applied[i], errs[i] = m.Up(ctx)
		})
	}
	wg.Wait()

	total := 0
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != 3 {
		t.Errorf("replicas applied %d migrations in all, want exactly 3 (each once)", total)
	}
	m, err := postgres.NewMigrator(open(t, url), discard(), streams...)
	if err != nil {
		t.Fatal(err)
	}
	// Each stream in its own version table.
	for table, want := range map[string]int{"goose_platform_version": 2, postgres.DefaultTable: 1} {
		var rows int
		if err := open(t, url).QueryRow(`SELECT count(*) FROM ` + table + ` WHERE version_id > 0`).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != want {
			t.Errorf("%s has %d applied rows, want %d", table, rows, want)
		}
	}
	if v := m.Versions(); len(v) != 2 || v[0] != 2 || v[1] != 1 {
		t.Errorf("Versions = %v, want [2 1]", v)
	}
	if pending, err := m.Pending(ctx); err != nil || pending {
		t.Errorf("Pending = %v, %v; want false, nil", pending, err)
	}
}

func TestMigrator_PendingSeesEveryStream(t *testing.T) {
	url := testenv.NewEmptyDatabase(t)
	ctx := context.Background()
	first, err := postgres.NewMigrator(open(t, url), discard(), streams[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Up(ctx); err != nil {
		t.Fatal(err)
	}
	both, err := postgres.NewMigrator(open(t, url), discard(), streams...)
	if err != nil {
		t.Fatal(err)
	}
	if pending, err := both.Pending(ctx); err != nil || !pending {
		t.Fatalf("Pending with the second stream not applied = %v, %v; want true", pending, err)
	}
}

func TestLeader_OneLeadsAndAnotherTakesOverWhenItDies(t *testing.T) {
	url := testenv.NewEmptyDatabase(t)
	ctx := context.Background()
	const key = 42
	a, b := postgres.NewLeader(open(t, url), key), postgres.NewLeader(open(t, url), key)

	if ok, err := a.Lead(ctx); !ok || err != nil {
		t.Fatalf("a.Lead = %v, %v; want leadership", ok, err)
	}
	if ok, err := b.Lead(ctx); ok || err != nil {
		t.Fatalf("b.Lead while a leads = %v, %v", ok, err)
	}
	if ok, _ := a.Lead(ctx); !ok {
		t.Fatal("a lost leadership for no reason")
	}

	// a's session dies (a crash, a network cut): Postgres frees the lock.
	admin := open(t, url)
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1`, key); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Lead(ctx); !ok || err != nil {
		t.Fatalf("b.Lead after a died = %v, %v; want leadership", ok, err)
	}
	if ok, _ := a.Lead(ctx); ok {
		t.Fatal("a still believes it leads after its session died")
	}

	if err := b.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.Lead(ctx); !ok {
		t.Fatal("a could not lead after b resigned")
	}
}

func TestLeader_CancelledCheckKeepsTheLockUntilResign(t *testing.T) {
	url := testenv.NewEmptyDatabase(t)
	ctx := context.Background()
	const key = 43
	a, b := postgres.NewLeader(open(t, url), key), postgres.NewLeader(open(t, url), key)
	if ok, err := a.Lead(ctx); !ok || err != nil {
		t.Fatalf("a.Lead = %v, %v; want leadership", ok, err)
	}

	// A check under a cancelled context (a reconciler stopping) says
	// nothing about the session: a still holds the lock...
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if ok, err := a.Lead(cancelled); !ok || err == nil {
		t.Fatalf("a.Lead(cancelled) = %v, %v; want still leading, with the context's error", ok, err)
	}
	if ok, _ := b.Lead(ctx); ok {
		t.Fatal("b leads while a still holds the lock")
	}
	// ...and its Resign really frees it, instead of leaving it on a
	// pooled connection where nobody could ever take it again.
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Lead(ctx); !ok || err != nil {
		t.Fatalf("b.Lead after a resigned = %v, %v; want leadership", ok, err)
	}
}

// Open sends statements in lib/pq's one-round-trip mode, whose mark is
// that a []byte argument travels as binary data: right for bytea, refused
// for jsonb (a string is the way to pass JSON). A URL that sets the mode
// itself keeps its choice.
func TestOpen_SendsArgumentsInOneRoundTripUnlessTheURLSaysOtherwise(t *testing.T) {
	url := testenv.NewDatabase(t)
	ctx := context.Background()
	var back []byte
	var js string
	oneTrip := open(t, url)
	if err := oneTrip.QueryRowContext(ctx, `SELECT $1::bytea`, []byte{0, 1, 0xff}).Scan(&back); err != nil || string(back) != "\x00\x01\xff" {
		t.Errorf("bytea from []byte: %q, %v; want the bytes back", back, err)
	}
	if err := oneTrip.QueryRowContext(ctx, `SELECT $1::jsonb::text`, `{"a": 1}`).Scan(&js); err != nil || js != `{"a": 1}` {
		t.Errorf("jsonb from a string: %q, %v", js, err)
	}
	if err := oneTrip.QueryRowContext(ctx, `SELECT $1::jsonb::text`, []byte(`{"a": 1}`)).Scan(&js); err == nil {
		t.Errorf("jsonb from []byte was accepted (%q): the pool does not send arguments in binary mode", js)
	}

	twoTrips := open(t, url+"&binary_parameters=no")
	if err := twoTrips.QueryRowContext(ctx, `SELECT $1::jsonb::text`, []byte(`{"a": 1}`)).Scan(&js); err != nil {
		t.Errorf("with binary_parameters=no in the URL, jsonb from []byte: %v", err)
	}
}

func TestOpen_RefusesABadURLWithoutEchoingIt(t *testing.T) {
	_, err := postgres.Open("postgres://user:s3cret@[::1/db", postgres.PoolConfig{})
	if err == nil {
		t.Fatal("a URL that does not parse was accepted")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("the error shows the password: %v", err)
	}
}

func backendPID(t *testing.T, pool *sql.DB) int {
	t.Helper()
	var pid int
	if err := pool.QueryRow(`SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// A primary demoted to read-only keeps its connections working for reads
// and refuses every write with 25006. The pool must drop such a
// connection at the first refusal, not hand it out again until its
// lifetime ends: the next write opens a new one.
func TestOpen_DiscardsAConnectionWhoseServerTurnedReadOnly(t *testing.T) {
	pool, err := postgres.Open(testenv.NewDatabase(t), postgres.PoolConfig{MaxOpenConns: 1, MaxIdleConns: 1, ConnMaxLifetime: time.Hour, ConnMaxIdleTime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	if _, err := pool.Exec(`CREATE TABLE t (n int)`); err != nil {
		t.Fatal(err)
	}
	before := backendPID(t, pool)
	// The one connection now behaves as one to a demoted primary does.
	if _, err := pool.Exec(`SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`); err != nil {
		t.Fatal(err)
	}
	_, err = pool.Exec(`INSERT INTO t VALUES ($1)`, 1)
	if !postgres.Disqualifies(err) {
		t.Fatalf("a write on a read-only session: %v; want 25006, which disqualifies the connection", err)
	}
	if _, err := pool.Exec(`INSERT INTO t VALUES ($1)`, 2); err != nil {
		t.Fatalf("the next write: %v; want it on a new connection", err)
	}
	if after := backendPID(t, pool); after == before {
		t.Errorf("still backend %d: the read-only connection was reused", before)
	}
}

// A connection whose backend the server ended (a primary shutting down)
// fails once; the pool then opens a new one.
func TestOpen_DiscardsAConnectionItsServerTerminated(t *testing.T) {
	url := testenv.NewDatabase(t)
	pool, err := postgres.Open(url, postgres.PoolConfig{MaxOpenConns: 1, MaxIdleConns: 1, ConnMaxLifetime: time.Hour, ConnMaxIdleTime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	before := backendPID(t, pool)
	admin := open(t, url)
	if _, err := admin.Exec(`SELECT pg_terminate_backend($1)`, before); err != nil {
		t.Fatal(err)
	}
	_ = pool.Ping() // meets the terminated session, or already a new one
	if after := backendPID(t, pool); after == before {
		t.Errorf("still backend %d after it was terminated", before)
	}
}

// With every host in the URL and target_session_attrs=read-write, new
// connections skip a host that does not take writes (a standby, or a
// former primary) and land on the one that does.
func TestOpen_MultiHostURLConnectsToTheHostThatTakesWrites(t *testing.T) {
	readOnly := testenv.NewPostgresServer(t, "-c", "default_transaction_read_only=on")
	primary := testenv.NewDatabase(t)
	ro, err := neturl.Parse(readOnly)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := neturl.Parse(primary)
	if err != nil {
		t.Fatal(err)
	}
	// Both servers share the user and password; the database is the
	// primary's, which the read-only server need not have: lib/pq asks
	// about writes before anything else.
	multi := *rw
	multi.Host = ro.Host + "," + rw.Host // host:port,host:port, as libpq spells it
	q := multi.Query()
	q.Set("target_session_attrs", "read-write")
	multi.RawQuery = q.Encode()

	pool := open(t, multi.String())
	for i := range 5 { // a new connection each round, the read-only host tried first
		var port string
		if err := pool.QueryRow(`SELECT current_setting('port') || ':' || current_setting('transaction_read_only')`).Scan(&port); err != nil {
			t.Fatalf("%q: %v", multi.String(), err)
		}
		if !strings.HasSuffix(port, ":off") {
			t.Fatalf("connection %d is read-only (%s): target_session_attrs=read-write did not pick the primary", i, port)
		}
		if _, err := pool.Exec(`CREATE TABLE IF NOT EXISTS w (n int)`); err != nil {
			t.Fatalf("a write through the multi-host URL: %v", err)
		}
		pool.SetMaxIdleConns(0) // the next round opens a new connection
		pool.SetMaxIdleConns(5)
	}

	// The control: the read-only server alone refuses writes, so the
	// rounds above did meet a choice.
	roPool := open(t, readOnly)
	if _, err := roPool.Exec(`CREATE TABLE w (n int)`); !postgres.Disqualifies(err) {
		t.Fatalf("a write on the read-only server: %v; want 25006", err)
	}
}

func TestDisqualifies(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pq.Error{Code: "25006"}, true},
		{&pq.Error{Code: "57P01"}, true},
		{&pq.Error{Code: "57P03"}, true},
		{&pq.Error{Code: "08006"}, true},
		{fmt.Errorf("claim: %w", &pq.Error{Code: "08001"}), true},
		{driver.ErrBadConn, true},
		{&pq.Error{Code: "23505"}, false}, // unique violation: the connection is fine
		{&pq.Error{Code: "40001"}, false}, // serialization failure
		{errors.New("other"), false},
		{nil, false},
	} {
		if got := postgres.Disqualifies(tc.err); got != tc.want {
			t.Errorf("Disqualifies(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// Against real servers: a server that is not in recovery has no lag, so
// reads go to it; the writer is reported as address:port, in the metric
// too.
func TestTopology_MeasuresRealServers(t *testing.T) {
	url := testenv.NewDatabase(t)
	primary, replica := open(t, url), open(t, url)
	reg := prometheus.NewRegistry()
	top, err := postgres.NewTopology(primary, replica, time.Second, reg, discard())
	if err != nil {
		t.Fatal(err)
	}
	top.Probe(context.Background())
	if top.ReadPool() != replica {
		t.Error("a replica with no lag did not get the read")
	}
	writer, _ := top.Writer()
	if i := strings.LastIndex(writer, ":"); i < 0 || writer[i+1:] != "5432" {
		t.Errorf("writer %q, want address:5432 (the server's own port)", writer)
	}
	if got := gaugeValue(t, reg, "postgres_writer_info", writer); got != 1 {
		t.Errorf("postgres_writer_info{server=%q} = %v, want 1", writer, got)
	}
}

// gaugeValue returns the value of the gauge name{server=server}.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name, server string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "server" && l.GetValue() == server {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{server=%q}", name, server)
	return 0
}

// A real failover: the primary's server dies, its streaming standby is
// promoted. A pool on the multi-host URL writes to the promoted standby
// within 3 s of the promotion, and the write acknowledged (and replayed)
// before the failover is there.
func TestOpen_WritesMoveToThePromotedStandbyAfterAFailover(t *testing.T) {
	ctx := context.Background()
	pair := testenv.NewPair(t)
	p, err := neturl.Parse(pair.PrimaryURL)
	if err != nil {
		t.Fatal(err)
	}
	s, err := neturl.Parse(pair.StandbyURL)
	if err != nil {
		t.Fatal(err)
	}
	multi := *p
	multi.Host = p.Host + "," + s.Host
	q := multi.Query()
	q.Set("target_session_attrs", "read-write")
	q.Set("connect_timeout", "2")
	multi.RawQuery = q.Encode()
	pool := open(t, multi.String())

	if _, err := pool.Exec(`CREATE TABLE t (n int)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(`INSERT INTO t VALUES ($1)`, 1); err != nil {
		t.Fatal(err)
	}
	if err := pair.WaitReplayed(ctx); err != nil {
		t.Fatal(err)
	} // asynchronous replication: acknowledged is not yet replicated
	if err := pair.StopPrimary(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pair.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()

	var lastErr error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, lastErr = pool.Exec(`INSERT INTO t VALUES ($1)`, 2); lastErr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write succeeded within 30s of the promotion: %v", lastErr)
		}
	}
	resumed := time.Since(promoted)
	t.Logf("writes resumed %v after the promotion", resumed.Round(time.Millisecond))
	if resumed > 3*time.Second {
		t.Errorf("writes resumed %v after the promotion, want within 3s", resumed)
	}
	var rows int
	var inRecovery bool
	if err := pool.QueryRow(`SELECT count(*), pg_is_in_recovery() FROM t`).Scan(&rows, &inRecovery); err != nil || rows != 2 || inRecovery {
		t.Errorf("after the failover: %d rows, in recovery %v (%v); want 2 on a primary", rows, inRecovery, err)
	}
}

// A standby cut off from its primary has replayed all it received and
// calls itself current; measured against the primary's position, it is
// not. Once the primary has written what the standby lacks, reads stop
// going to it within the bound.
func TestTopology_AStandbyCutOffFromItsPrimaryStopsReceivingReads(t *testing.T) {
	pair := testenv.NewPair(t)
	primary, standby := open(t, pair.PrimaryURL), open(t, pair.StandbyURL)
	const bound = 300 * time.Millisecond
	top, err := postgres.NewTopology(primary, standby, bound, prometheus.NewRegistry(), discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	top.Probe(ctx)
	if top.ReadPool() != standby {
		t.Fatal("a streaming standby that has replayed everything did not get the read")
	}
	for _, q := range []string{`ALTER SYSTEM SET primary_conninfo = ''`, `SELECT pg_reload_conf()`} {
		if _, err := standby.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// The reload stops the WAL receiver in its own time: write only once it
	// is gone, or the write may still stream over and cut nothing.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var receivers int
		if err := standby.QueryRow(`SELECT count(*) FROM pg_stat_wal_receiver`).Scan(&receivers); err != nil {
			t.Fatal(err)
		}
		if receivers == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby's WAL receiver still runs 30s after primary_conninfo was cleared")
		}
	}
	if _, err := primary.Exec(`CREATE TABLE after_the_cut (n int)`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(bound + time.Second)
	for top.ReadPool() == standby {
		if time.Now().After(deadline) {
			t.Fatalf("the cut-off standby still got reads %v after the primary wrote what it lacks (bound %v)", bound+time.Second, bound)
		}
		top.Probe(ctx)
		time.Sleep(50 * time.Millisecond)
	}
	var missing bool
	if err := standby.QueryRow(`SELECT to_regclass('after_the_cut') IS NULL`).Scan(&missing); err != nil || !missing {
		t.Errorf("the standby has the table written after the cut (%v): the test cut nothing", err)
	}
}
