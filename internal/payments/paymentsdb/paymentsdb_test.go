package paymentsdb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
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

func tables(t *testing.T, pool *sql.DB) []string {
	t.Helper()
	rows, err := pool.Query(`SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_name NOT LIKE 'goose_%' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// TestMigrations_DownUndoesUp runs every migration's Down section, which
// nothing else exercises, from the files on disk (the same ones the binary
// embeds): a rollback that fails is found here, not during an incident.
func TestMigrations_DownUndoesUp(t *testing.T) {
	pool := open(t, testenv.NewEmptyDatabase(t))
	ctx := context.Background()
	// The payments stream builds on the key records' table.
	keys, err := postgres.NewMigrator(pool, discard(), idempotency.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Up(ctx); err != nil {
		t.Fatal(err)
	}
	migrations, err := goose.NewProvider(goose.DialectPostgres, pool, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 { // up, down, and up again: down leaves nothing behind
		if _, err := migrations.Up(ctx); err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		if got := tables(t, pool); !slices.Equal(got, []string{"idempotency_keys", "payments", "refunds"}) {
			t.Fatalf("round %d: tables after up %v", round, got)
		}
		if _, err := migrations.DownTo(ctx, 0); err != nil {
			t.Fatalf("round %d: down: %v", round, err)
		}
		if got := tables(t, pool); !slices.Equal(got, []string{"idempotency_keys"}) {
			t.Fatalf("round %d: tables after down %v, want only the key records' own", round, got)
		}
	}
}

// A database written before the key records moved out of payments: every
// payment's key, fingerprint and stored answer must carry over, so a retry
// of a key used before the upgrade still replays, byte for byte.
func TestMigrations_KeysWrittenBeforeTheUpgradeStillReplay(t *testing.T) {
	pool := open(t, testenv.NewEmptyDatabase(t))
	ctx := context.Background()
	migrations, err := goose.NewProvider(goose.DialectPostgres, pool, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.UpTo(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// As version 3 wrote them: a charged payment, a declined one, one
	// still processing under an expired lease.
	if _, err := pool.ExecContext(ctx, `
		INSERT INTO payments (id, client_id, idempotency_key, request_fingerprint, amount, currency, status,
		                      provider_charge_id, failure_code, response_status, response_body, lease_token, lease_expires_at)
		VALUES ('pay_ok', 'c', 'k-ok', 'fp-ok', 1000, 'usd', 'succeeded', 'ch_1', NULL, 201, '{"id":"pay_ok"}', NULL, NULL),
		       ('pay_no', 'c', 'k-no', 'fp-no', 1402, 'usd', 'failed', 'ch_2', 'card_declined', 402, '{"type":"x"}', NULL, NULL),
		       ('pay_wip', 'c', 'k-wip', 'fp-wip', 5, 'usd', 'processing', NULL, NULL, NULL, NULL, 'old', now() - interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	up, err := postgres.NewMigrator(pool, discard(), idempotency.Migrations, paymentsdb.Migrations)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Up(ctx); err != nil {
		t.Fatalf("upgrade: %v", err)
	}

	store := paymentsdb.New(pool, nil, &idempotency.Keys{Lease: time.Minute, Metrics: metrics(t)})
	for _, tt := range []struct {
		key, fingerprint string
		status           int
		body, ctype, loc string
	}{
		{"k-ok", "fp-ok", 201, `{"id":"pay_ok"}`, "application/json", "/v1/payments/pay_ok"},
		{"k-no", "fp-no", 402, `{"type":"x"}`, "application/problem+json", ""},
	} {
		claimed, err := store.ClaimPayment(ctx, idempotency.Request{Scope: "c", Key: tt.key, Fingerprint: tt.fingerprint}, payments.Payment{ID: "pay_new", ClientID: "c", Amount: 1, Currency: "usd"})
		if err != nil || claimed.Replay == nil {
			t.Fatalf("%s after the upgrade: %+v, %v; want its stored answer", tt.key, claimed, err)
		}
		r := claimed.Replay
		if r.Status != tt.status || string(r.Body) != tt.body || r.Header.Get("Content-Type") != tt.ctype || r.Header.Get("Location") != tt.loc {
			t.Errorf("%s replays %d %v %s", tt.key, r.Status, r.Header, r.Body)
		}
	}
	// The processing one is resumed, as its lease expired.
	claimed, err := store.ClaimPayment(ctx, idempotency.Request{Scope: "c", Key: "k-wip", Fingerprint: "fp-wip"}, payments.Payment{ID: "pay_new", ClientID: "c", Amount: 5, Currency: "usd"})
	if err != nil || claimed.Claim.New || claimed.Resource.ID != "pay_wip" {
		t.Fatalf("the processing payment after the upgrade: %+v, %v; want pay_wip resumed", claimed, err)
	}
	// And a key reused for another request is still refused.
	if _, err := store.ClaimPayment(ctx, idempotency.Request{Scope: "c", Key: "k-ok", Fingerprint: "other"}, payments.Payment{ID: "pay_x", ClientID: "c", Amount: 1, Currency: "usd"}); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Errorf("k-ok for another request: %v, want ErrKeyReused", err)
	}
}

func metrics(t *testing.T) *idempotency.Metrics {
	t.Helper()
	m, err := idempotency.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// alwaysReplica sends every read that may be stale to one pool, as a
// topology does while its replica is within the lag bound.
type alwaysReplica struct{ pool *sql.DB }

func (a alwaysReplica) ReadPool() *sql.DB { return a.pool }

// newStore returns a store on a fresh database, reading from replica if
// it is not nil.
func newStore(t *testing.T, primary, replica *sql.DB) *paymentsdb.Store {
	t.Helper()
	var reads paymentsdb.Reads
	if replica != nil {
		reads = alwaysReplica{replica}
	}
	return paymentsdb.New(primary, reads, &idempotency.Keys{Lease: time.Minute, Metrics: metrics(t)})
}

func migrated(t *testing.T) *sql.DB {
	t.Helper()
	return open(t, testenv.NewDatabase(t, idempotency.Migrations, paymentsdb.Migrations))
}

// create inserts a processing payment for the client's key.
func create(t *testing.T, s *paymentsdb.Store, client, key string) payments.Payment {
	t.Helper()
	p := payments.Payment{ID: "pay_" + client + "_" + key, ClientID: client, Amount: 1000, Currency: "usd", Metadata: map[string]string{"order": key}}
	claimed, err := s.ClaimPayment(context.Background(), idempotency.Request{Scope: client, Key: key, Fingerprint: "fp"}, p)
	if err != nil || !claimed.Claim.New {
		t.Fatalf("claim %s: %+v, %v", key, claimed, err)
	}
	return claimed.Resource
}

func ids(ps []payments.Payment) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

func TestPayment_IsScopedToTheClient(t *testing.T) {
	s := newStore(t, migrated(t), nil)
	ctx := context.Background()
	p := create(t, s, "owner", "k")
	got, err := s.Payment(ctx, "owner", p.ID)
	if err != nil || got.Metadata["order"] != "k" || got.Status != payments.StatusProcessing || !got.CreatedAt.Equal(p.CreatedAt) {
		t.Fatalf("owner's Payment = %+v, %v; want %+v", got, err, p)
	}
	if _, err := s.Payment(ctx, "someone-else", p.ID); !errors.Is(err, payments.ErrNotFound) {
		t.Fatalf("another client's Payment: %v, want ErrNotFound", err)
	}
}

func TestPayments_PagesNewestFirst(t *testing.T) {
	s := newStore(t, migrated(t), nil)
	ctx := context.Background()
	var want []string // newest first
	for i := range 7 {
		want = append([]string{create(t, s, "c", fmt.Sprint(i)).ID}, want...)
	}
	create(t, s, "other", "x")

	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		page, more, err := s.Payments(ctx, "c", 3, cursor)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(page)...)
		if !more {
			break
		}
		cursor = page[len(page)-1].ID
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages gave\n%v\nwant\n%v", got, want)
	}
	if _, _, err := s.Payments(ctx, "c", 3, "pay_other_x"); !errors.Is(err, payments.ErrBadCursor) {
		t.Errorf("another client's payment as cursor: %v, want ErrBadCursor", err)
	}
}

func TestPayments_ReadsGoToTheReplica(t *testing.T) {
	// A "replica" that is its own database: a row only it has shows
	// which pool answered.
	primary, replica := migrated(t), migrated(t)
	onlyOnReplica := create(t, newStore(t, replica, nil), "c", "replica-only")
	s := newStore(t, primary, replica)
	ctx := context.Background()
	if _, err := s.Payment(ctx, "c", onlyOnReplica.ID); err != nil {
		t.Errorf("Payment of a row only the replica has: %v; reads must go to the replica", err)
	}
	if page, _, err := s.Payments(ctx, "c", 10, ""); err != nil || len(page) != 1 || page[0].ID != onlyOnReplica.ID {
		t.Errorf("Payments: %v, %v; want the replica's row", ids(page), err)
	}
	if refunds, err := s.Refunds(ctx, "c", onlyOnReplica.ID); err != nil || len(refunds) != 0 {
		t.Errorf("Refunds of the replica's payment: %v, %v", refunds, err)
	}
}

func TestPayments_ReplicaFallsBackToPrimary(t *testing.T) {
	primary := migrated(t)
	// A replica that cannot be reached: reads must still work.
	broken, err := postgres.Open("postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", postgres.PoolConfig{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broken.Close() })
	s := newStore(t, primary, broken)
	ctx := context.Background()
	p := create(t, s, "c", "k")
	if _, err := s.Payment(ctx, "c", p.ID); err != nil {
		t.Errorf("Payment with a broken replica: %v", err)
	}
	if page, _, err := s.Payments(ctx, "c", 10, ""); err != nil || len(page) != 1 {
		t.Errorf("Payments with a broken replica: %d payments, %v", len(page), err)
	}
	if _, err := s.Refunds(ctx, "c", p.ID); err != nil {
		t.Errorf("Refunds with a broken replica: %v", err)
	}
}

func TestPayments_LaggingReplicaFallsBackToPrimary(t *testing.T) {
	// A replica that has not caught up: a database of its own, holding one
	// older payment the primary does not have, so that answering from it
	// shows.
	primaryPool, replicaPool := migrated(t), migrated(t)
	stale := create(t, newStore(t, replicaPool, nil), "c", "replica-only")
	s := newStore(t, primaryPool, replicaPool)
	ctx := context.Background()
	older := create(t, s, "c", "k1")
	newer := create(t, s, "c", "k2")
	if _, err := s.Payment(ctx, "c", newer.ID); err != nil {
		t.Errorf("Payment the replica lacks: %v", err)
	}
	page, _, err := s.Payments(ctx, "c", 10, newer.ID)
	if err != nil || len(page) != 1 || page[0].ID != older.ID {
		t.Errorf("Payments after a cursor the replica lacks: %v, %v; want [%s] from the primary, not the replica's %s", ids(page), err, older.ID, stale.ID)
	}
	if _, _, err := s.Payments(ctx, "c", 10, "pay_nobody"); !errors.Is(err, payments.ErrBadCursor) {
		t.Errorf("a cursor neither has: %v, want ErrBadCursor", err)
	}
	if _, err := s.Refunds(ctx, "c", newer.ID); err != nil {
		t.Errorf("Refunds of a payment the replica lacks: %v", err)
	}
}
