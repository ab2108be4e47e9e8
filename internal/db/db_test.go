package db_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/db"
	"github.com/resiliencekit/payservice/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t *testing.T, url string) *sql.DB {
	t.Helper()
	pool, err := db.Open(url, db.PoolConfig{MaxOpenConns: 10, MaxIdleConns: 5, ConnMaxLifetime: time.Minute, ConnMaxIdleTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	return pool
}

func TestMigrator_ConcurrentUpAppliesEachMigrationOnce(t *testing.T) {
	url := testenv.NewEmptyDatabase(t)
	ctx := context.Background()

	// Several replicas starting at once, each with its own pool.
	const replicas = 4
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	applied := make([][]int64, replicas)
	for i := range replicas {
		wg.Go(func() {
			m, err := db.NewMigrator(open(t, url), discard())
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
		total += len(applied[i])
	}
	m, err := db.NewMigrator(open(t, url), discard())
	if err != nil {
		t.Fatal(err)
	}
	if want := int(m.Version()); total != want {
		t.Errorf("replicas applied %d migrations in all, want exactly %d (each once)", total, want)
	}
	var rows int
	if err := open(t, url).QueryRow(`SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != int(m.Version()) {
		t.Errorf("goose_db_version has %d applied rows, want %d", rows, m.Version())
	}
	if pending, err := m.Pending(ctx); err != nil || pending {
		t.Errorf("Pending = %v, %v; want false, nil", pending, err)
	}
}

func newPayment(client, key string) db.Payment {
	return db.Payment{
		ID:             "pay_" + client + "_" + key,
		ClientID:       client,
		IdempotencyKey: key,
		Fingerprint:    "fp",
		Amount:         1000,
		Currency:       "usd",
		Metadata:       map[string]string{"order": key},
	}
}

func TestPayments_CreateIsAtomicPerClientAndKey(t *testing.T) {
	repo := db.NewPayments(open(t, testenv.NewDatabase(t)), nil)
	ctx := context.Background()

	const callers = 20
	var wg sync.WaitGroup
	created := make(chan string, callers)
	ids := make(chan string, callers)
	for i := range callers {
		wg.Go(func() {
			p := newPayment("client_a", "key-1")
			p.ID = fmt.Sprintf("pay_%02d", i)
			got, ok, err := repo.Create(ctx, p)
			if err != nil {
				t.Errorf("Create: %v", err)
				return
			}
			if ok {
				created <- got.ID
			}
			ids <- got.ID
		})
	}
	wg.Wait()
	close(created)
	close(ids)
	if n := len(created); n != 1 {
		t.Fatalf("%d callers created a payment for one key, want 1", n)
	}
	winner := <-created
	for id := range ids {
		if id != winner {
			t.Errorf("a caller got payment %s, want the one created: %s", id, winner)
		}
	}

	// Another client may use the same key.
	other, ok, err := repo.Create(ctx, newPayment("client_b", "key-1"))
	if err != nil || !ok || other.ID == winner {
		t.Fatalf("client_b with the same key: created=%v id=%s err=%v; want a new payment", ok, other.ID, err)
	}
}

func TestPayments_SettleIsFinal(t *testing.T) {
	repo := db.NewPayments(open(t, testenv.NewDatabase(t)), nil)
	ctx := context.Background()
	p, _, err := repo.Create(ctx, newPayment("c", "k"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Status != db.StatusProcessing {
		t.Fatalf("new payment status %q, want processing", p.Status)
	}

	settled, err := repo.Settle(ctx, p.ID, db.Settlement{Status: db.StatusSucceeded, ProviderChargeID: "ch_1"})
	if err != nil || settled.Status != db.StatusSucceeded || settled.ProviderChargeID != "ch_1" {
		t.Fatalf("Settle = %+v, %v", settled, err)
	}
	again, err := repo.Settle(ctx, p.ID, db.Settlement{Status: db.StatusFailed, FailureCode: "late"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Status != db.StatusSucceeded || again.FailureCode != "" {
		t.Errorf("a settled payment changed: %+v", again)
	}
	if _, err := repo.Settle(ctx, p.ID, db.Settlement{Status: db.StatusProcessing}); err == nil {
		t.Error("Settle to processing succeeded, want an error")
	}
	if err := repo.Abandon(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Get(ctx, "c", p.ID); err != nil {
		t.Errorf("Abandon deleted a settled payment: %v", err)
	}
}

func TestPayments_AbandonFreesTheKey(t *testing.T) {
	repo := db.NewPayments(open(t, testenv.NewDatabase(t)), nil)
	ctx := context.Background()
	p, _, err := repo.Create(ctx, newPayment("c", "k"))
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Abandon(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Get(ctx, "c", p.ID); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("Get after Abandon: %v, want ErrNotFound", err)
	}
	retry := newPayment("c", "k")
	retry.ID = "pay_retry"
	if _, ok, err := repo.Create(ctx, retry); err != nil || !ok {
		t.Fatalf("Create with the abandoned key: created=%v err=%v, want a new payment", ok, err)
	}
}

func TestPayments_GetIsScopedToTheClient(t *testing.T) {
	repo := db.NewPayments(open(t, testenv.NewDatabase(t)), nil)
	ctx := context.Background()
	p, _, err := repo.Create(ctx, newPayment("owner", "k"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := repo.Get(ctx, "owner", p.ID)
	if err != nil || got.Metadata["order"] != "k" {
		t.Fatalf("owner's Get = %+v, %v", got, err)
	}
	if _, err := repo.Get(ctx, "someone-else", p.ID); !errors.Is(err, db.ErrNotFound) {
		t.Fatalf("another client's Get: %v, want ErrNotFound", err)
	}
}

func TestPayments_ListPagesNewestFirst(t *testing.T) {
	pool := open(t, testenv.NewDatabase(t))
	repo := db.NewPayments(pool, nil)
	ctx := context.Background()
	var want []string // newest first
	for i := range 7 {
		p := newPayment("c", fmt.Sprint(i))
		if _, _, err := repo.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		want = append([]string{p.ID}, want...)
	}
	if _, _, err := repo.Create(ctx, newPayment("other", "x")); err != nil {
		t.Fatal(err)
	}

	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		page, more, err := repo.List(ctx, "c", 3, cursor)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page {
			got = append(got, p.ID)
		}
		if !more {
			break
		}
		cursor = page[len(page)-1].ID
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("pages gave\n%v\nwant\n%v", got, want)
	}
	if _, _, err := repo.List(ctx, "c", 3, "pay_other_x"); !errors.Is(err, db.ErrCursorNotFound) {
		t.Errorf("another client's payment as cursor: %v, want ErrCursorNotFound", err)
	}
}

func TestPayments_ReplicaFallsBackToPrimary(t *testing.T) {
	primary := open(t, testenv.NewDatabase(t))
	// A replica that cannot be reached: reads must still work.
	broken, err := db.Open("postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", db.PoolConfig{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broken.Close() })
	repo := db.NewPayments(primary, broken)
	ctx := context.Background()
	p, _, err := repo.Create(ctx, newPayment("c", "k"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Get(ctx, "c", p.ID); err != nil {
		t.Errorf("Get with a broken replica: %v", err)
	}
	if page, _, err := repo.List(ctx, "c", 10, ""); err != nil || len(page) != 1 {
		t.Errorf("List with a broken replica: %d payments, %v", len(page), err)
	}
}
