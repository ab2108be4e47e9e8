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
	"sync"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
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

// TestMigrations_DownUndoesUp runs every migration's Down section, which
// nothing else exercises, from the files on disk (the same ones the binary
// embeds): a rollback that fails is found here, not during an incident.
func TestMigrations_DownUndoesUp(t *testing.T) {
	pool := open(t, testenv.NewEmptyDatabase(t))
	ctx := context.Background()
	migrations, err := goose.NewProvider(goose.DialectPostgres, pool, os.DirFS("migrations"), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	tables := func() []string {
		t.Helper()
		rows, err := pool.QueryContext(ctx, `SELECT table_name FROM information_schema.tables
			WHERE table_schema = 'public' AND table_name <> 'goose_db_version' ORDER BY 1`)
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
		return names
	}
	for round := range 2 { // up, down, and up again: down leaves nothing behind
		if _, err := migrations.Up(ctx); err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		if got := tables(); !slices.Equal(got, []string{"payments"}) {
			t.Fatalf("round %d: tables after up %v, want [payments]", round, got)
		}
		if _, err := migrations.DownTo(ctx, 0); err != nil {
			t.Fatalf("round %d: down: %v", round, err)
		}
		if got := tables(); len(got) != 0 {
			t.Fatalf("round %d: tables after down %v, want none", round, got)
		}
	}
}

func newPayment(client, key string) paymentsdb.Payment {
	return paymentsdb.Payment{
		ID:             "pay_" + client + "_" + key,
		ClientID:       client,
		IdempotencyKey: key,
		Fingerprint:    "fp",
		Amount:         1000,
		Currency:       "usd",
		Metadata:       map[string]string{"order": key},
	}
}

const lease = time.Minute

func claim(t *testing.T, repo *paymentsdb.Payments, p paymentsdb.Payment, token string, lease time.Duration) paymentsdb.Claim {
	t.Helper()
	c, err := repo.Claim(context.Background(), p, token, lease)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return c
}

// respondWith returns a Respond rendering a fixed body, recording the row
// it was given.
func respondWith(body string, seen *paymentsdb.Payment) paymentsdb.Respond {
	return func(p paymentsdb.Payment) (int, []byte, error) {
		*seen = p
		return 201, []byte(body), nil
	}
}

func TestPayments_ClaimIsAtomicPerClientAndKey(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()

	const callers = 20
	var wg sync.WaitGroup
	owners := make(chan string, callers)
	ids := make(chan string, callers)
	for i := range callers {
		wg.Go(func() {
			p := newPayment("client_a", "key-1")
			p.ID = fmt.Sprintf("pay_%02d", i)
			c, err := repo.Claim(ctx, p, fmt.Sprint("token-", i), lease)
			if err != nil {
				t.Errorf("Claim: %v", err)
				return
			}
			if c.Owned {
				if !c.Created {
					t.Errorf("caller %d owns without creating, but no lease had expired", i)
				}
				owners <- c.Payment.ID
			}
			ids <- c.Payment.ID
		})
	}
	wg.Wait()
	close(owners)
	close(ids)
	if n := len(owners); n != 1 {
		t.Fatalf("%d callers own the key, want 1", n)
	}
	winner := <-owners
	for id := range ids {
		if id != winner {
			t.Errorf("a caller got payment %s, want the one created: %s", id, winner)
		}
	}

	// Another client may use the same key.
	other := claim(t, repo, newPayment("client_b", "key-1"), "t", lease)
	if !other.Created || other.Payment.ID == winner {
		t.Fatalf("client_b with the same key: %+v; want a new payment", other)
	}
}

func TestPayments_ExpiredLeaseIsTakenOverByOneRetry(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	first := claim(t, repo, newPayment("c", "k"), "first", 50*time.Millisecond)
	if got := claim(t, repo, newPayment("c", "k"), "early", lease); got.Owned || !got.Payment.LeaseActive {
		t.Fatalf("a claim while the lease is held: %+v; want not owned, lease active", got)
	}
	time.Sleep(100 * time.Millisecond)

	const retries = 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	owners := 0
	for i := range retries {
		wg.Go(func() {
			c := claim(t, repo, newPayment("c", "k"), fmt.Sprint("retry-", i), lease)
			if c.Owned {
				mu.Lock()
				owners++
				mu.Unlock()
				if c.Created || c.Payment.ID != first.Payment.ID {
					t.Errorf("takeover %+v: want the same payment, resumed", c)
				}
			}
		})
	}
	wg.Wait()
	if owners != 1 {
		t.Fatalf("%d retries took the expired lease over, want 1", owners)
	}

	// A different request never takes over, expired lease or not.
	other := newPayment("c", "k")
	other.Fingerprint = "another request"
	if c := claim(t, repo, other, "x", lease); c.Owned {
		t.Error("a request with another fingerprint took the payment over")
	}
}

func TestPayments_AStaleOwnerCannotTouchTheNewOwnersLease(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	old := claim(t, repo, newPayment("c", "k"), "old", 50*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	if c := claim(t, repo, newPayment("c", "k"), "new", lease); !c.Owned {
		t.Fatal("the expired lease was not taken over")
	}
	id := old.Payment.ID
	for name, err := range map[string]error{
		"StartCharge":  repo.StartCharge(ctx, id, "old", lease),
		"ReleaseLease": repo.ReleaseLease(ctx, id, "old"),
		"Abandon":      repo.Abandon(ctx, id, "old"),
	} {
		if !errors.Is(err, paymentsdb.ErrLeaseLost) {
			t.Errorf("%s with the old token: %v, want ErrLeaseLost", name, err)
		}
	}
	if c := claim(t, repo, newPayment("c", "k"), "third", lease); c.Owned || !c.Payment.LeaseActive {
		t.Errorf("the new owner's lease was disturbed: %+v", c)
	}
	if err := repo.StartCharge(ctx, id, "new", lease); err != nil {
		t.Errorf("StartCharge by the new owner: %v", err)
	}
}

func TestPayments_SettleIsFinalAndStoresTheResponse(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	p := claim(t, repo, newPayment("c", "k"), "t", lease).Payment
	if p.Status != paymentsdb.StatusProcessing {
		t.Fatalf("new payment status %q, want processing", p.Status)
	}

	var rendered paymentsdb.Payment
	settled, now, err := repo.Settle(ctx, p.ID, "t", paymentsdb.Settlement{Status: paymentsdb.StatusSucceeded, ProviderChargeID: "ch_1"}, respondWith(`{"first":true}`, &rendered))
	if err != nil || !now || settled.Status != paymentsdb.StatusSucceeded || string(settled.ResponseBody) != `{"first":true}` {
		t.Fatalf("Settle = %+v, %v, %v", settled, now, err)
	}
	stored, err := repo.Get(ctx, "c", p.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The response was rendered from exactly what is stored.
	if !rendered.UpdatedAt.Equal(stored.UpdatedAt) || rendered.Status != stored.Status || rendered.ProviderChargeID != "ch_1" {
		t.Errorf("rendered from %+v, stored %+v", rendered, stored)
	}
	if stored.ResponseStatus != 201 || string(stored.ResponseBody) != `{"first":true}` || stored.LeaseActive {
		t.Errorf("stored %+v", stored)
	}

	again, now, err := repo.Settle(ctx, p.ID, "t", paymentsdb.Settlement{Status: paymentsdb.StatusFailed, FailureCode: "late"}, respondWith(`{"second":true}`, &rendered))
	if err != nil || now {
		t.Fatalf("second Settle: now=%v err=%v", now, err)
	}
	if again.Status != paymentsdb.StatusSucceeded || string(again.ResponseBody) != `{"first":true}` {
		t.Errorf("a settled payment changed: %+v", again)
	}
	if _, _, err := repo.Settle(ctx, p.ID, "t", paymentsdb.Settlement{Status: paymentsdb.StatusProcessing}, respondWith("", &rendered)); err == nil {
		t.Error("Settle to processing succeeded, want an error")
	}
}

func TestPayments_AbandonFreesTheKey(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	p := claim(t, repo, newPayment("c", "k"), "t", lease).Payment
	if err := repo.Abandon(ctx, p.ID, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Get(ctx, "c", p.ID); !errors.Is(err, paymentsdb.ErrNotFound) {
		t.Fatalf("Get after Abandon: %v, want ErrNotFound", err)
	}
	retry := newPayment("c", "k")
	retry.ID = "pay_retry"
	if c := claim(t, repo, retry, "t2", lease); !c.Created {
		t.Fatalf("Claim of the abandoned key: %+v, want a new payment", c)
	}
}

func TestPayments_StaleListsOnlyUnheldOldProcessingPayments(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	held := claim(t, repo, newPayment("c", "held"), "t1", lease).Payment
	released := claim(t, repo, newPayment("c", "released"), "t2", lease).Payment
	settled := claim(t, repo, newPayment("c", "settled"), "t3", lease).Payment
	if err := repo.ReleaseLease(ctx, released.ID, "t2"); err != nil {
		t.Fatal(err)
	}
	var seen paymentsdb.Payment
	if _, _, err := repo.Settle(ctx, settled.ID, "t3", paymentsdb.Settlement{Status: paymentsdb.StatusSucceeded}, respondWith("{}", &seen)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)

	stale, err := repo.Stale(ctx, 10*time.Millisecond, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 1 || stale[0].ID != released.ID {
		t.Fatalf("Stale = %v, want only %s (not the held %s nor the settled %s)", ids(stale), released.ID, held.ID, settled.ID)
	}
	if young, _ := repo.Stale(ctx, time.Hour, 10); len(young) != 0 {
		t.Errorf("Stale(1h) = %v, want none", ids(young))
	}

	if err := repo.TakeLease(ctx, released.ID, "reconciler", lease); err != nil {
		t.Fatal(err)
	}
	if err := repo.TakeLease(ctx, released.ID, "another", lease); !errors.Is(err, paymentsdb.ErrLeaseLost) {
		t.Errorf("a second TakeLease: %v, want ErrLeaseLost", err)
	}
}

func TestPayments_SettleIsFencedByTheLease(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	p := claim(t, repo, newPayment("c", "k"), "old", 50*time.Millisecond).Payment
	time.Sleep(100 * time.Millisecond)
	if c := claim(t, repo, newPayment("c", "k"), "new", lease); !c.Owned {
		t.Fatal("the expired lease was not taken over")
	}
	var seen paymentsdb.Payment
	ok := paymentsdb.Settlement{Status: paymentsdb.StatusSucceeded, ProviderChargeID: "ch_1"}
	if _, _, err := repo.Settle(ctx, p.ID, "old", ok, respondWith("{}", &seen)); !errors.Is(err, paymentsdb.ErrLeaseLost) {
		t.Fatalf("Settle by the old holder: %v, want ErrLeaseLost", err)
	}
	if got, _ := repo.Get(ctx, "c", p.ID); got.Status != paymentsdb.StatusProcessing || !got.LeaseActive {
		t.Fatalf("after the old holder's Settle: %+v; want processing, still held", got)
	}
	if _, now, err := repo.Settle(ctx, p.ID, "new", ok, respondWith("{}", &seen)); err != nil || !now {
		t.Fatalf("Settle by the holder: %v, %v", now, err)
	}
	// Once final, anyone's Settle returns the stored row: a late holder
	// learns the outcome rather than an error.
	late, now, err := repo.Settle(ctx, p.ID, "old", paymentsdb.Settlement{Status: paymentsdb.StatusFailed}, respondWith("{}", &seen))
	if err != nil || now || late.Status != paymentsdb.StatusSucceeded {
		t.Fatalf("Settle of a final payment: %+v, %v, %v; want the stored row", late, now, err)
	}
}

func TestPayments_NoChargeSettlementWaitsOutItsGracePeriodUnderTheLock(t *testing.T) {
	pool := open(t, testenv.NewDatabase(t, paymentsdb.Migrations))
	repo := paymentsdb.NewPayments(pool, nil)
	ctx := context.Background()
	p := claim(t, repo, newPayment("c", "k"), "t", lease).Payment
	if err := repo.StartCharge(ctx, p.ID, "t", lease); err != nil {
		t.Fatal(err)
	}
	var seen paymentsdb.Payment
	noCharge := paymentsdb.Settlement{Status: paymentsdb.StatusFailed, FailureCode: "no_charge", UnchargedFor: time.Hour}
	if _, _, err := repo.Settle(ctx, p.ID, "t", noCharge, respondWith("{}", &seen)); !errors.Is(err, paymentsdb.ErrAttemptTooRecent) {
		t.Fatalf("a no-charge verdict an hour early: %v, want ErrAttemptTooRecent", err)
	}
	if got, _ := repo.Get(ctx, "c", p.ID); got.Status != paymentsdb.StatusProcessing {
		t.Fatalf("the refused verdict changed the payment: %+v", got)
	}

	// The attempt is old enough now, as time would make it...
	if _, err := pool.ExecContext(ctx, `UPDATE payments SET charge_attempted_at = now() - interval '2 hours' WHERE id = $1`, p.ID); err != nil {
		t.Fatal(err)
	}
	// ...but another transaction holds the row, recording a new attempt,
	// while the verdict is being settled. The verdict must see it: its
	// check belongs under the row lock, not before it.
	other, err := pool.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	if _, err := other.ExecContext(ctx, `UPDATE payments SET charge_attempted_at = now() WHERE id = $1`, p.ID); err != nil {
		t.Fatal(err)
	}
	settled := make(chan error, 1)
	go func() {
		_, _, err := repo.Settle(ctx, p.ID, "t", noCharge, respondWith("{}", &seen))
		settled <- err
	}()
	waitForLockWait(t, pool)
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-settled; !errors.Is(err, paymentsdb.ErrAttemptTooRecent) {
		t.Fatalf("a verdict racing a new attempt: %v, want ErrAttemptTooRecent", err)
	}

	if _, err := pool.ExecContext(ctx, `UPDATE payments SET charge_attempted_at = now() - interval '2 hours' WHERE id = $1`, p.ID); err != nil {
		t.Fatal(err)
	}
	if got, now, err := repo.Settle(ctx, p.ID, "t", noCharge, respondWith("{}", &seen)); err != nil || !now || got.FailureCode != "no_charge" {
		t.Fatalf("the verdict after the grace period: %+v, %v, %v", got, now, err)
	}
}

// waitForLockWait returns once a session of this database waits for a lock.
func waitForLockWait(t *testing.T, pool *sql.DB) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var waiting bool
		if err := pool.QueryRow(`SELECT count(*) > 0 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no session ever waited for the row lock")
		}
	}
}

func ids(ps []paymentsdb.Payment) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out
}

func TestPayments_GetIsScopedToTheClient(t *testing.T) {
	repo := paymentsdb.NewPayments(open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), nil)
	ctx := context.Background()
	p := claim(t, repo, newPayment("owner", "k"), "t", lease).Payment
	got, err := repo.Get(ctx, "owner", p.ID)
	if err != nil || got.Metadata["order"] != "k" {
		t.Fatalf("owner's Get = %+v, %v", got, err)
	}
	if _, err := repo.Get(ctx, "someone-else", p.ID); !errors.Is(err, paymentsdb.ErrNotFound) {
		t.Fatalf("another client's Get: %v, want ErrNotFound", err)
	}
}

func TestPayments_ListPagesNewestFirst(t *testing.T) {
	pool := open(t, testenv.NewDatabase(t, paymentsdb.Migrations))
	repo := paymentsdb.NewPayments(pool, nil)
	ctx := context.Background()
	var want []string // newest first
	for i := range 7 {
		p := newPayment("c", fmt.Sprint(i))
		claim(t, repo, p, "t", lease)
		want = append([]string{p.ID}, want...)
	}
	claim(t, repo, newPayment("other", "x"), "t", lease)

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
	if _, _, err := repo.List(ctx, "c", 3, "pay_other_x"); !errors.Is(err, paymentsdb.ErrCursorNotFound) {
		t.Errorf("another client's payment as cursor: %v, want ErrCursorNotFound", err)
	}
}

func TestPayments_ReadsGoToTheReplica(t *testing.T) {
	// A "replica" that is its own database: a row only it has shows
	// which pool answered.
	primary, replica := open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), open(t, testenv.NewDatabase(t, paymentsdb.Migrations))
	onlyOnReplica := claim(t, paymentsdb.NewPayments(replica, nil), newPayment("c", "replica-only"), "t", lease).Payment
	repo := paymentsdb.NewPayments(primary, replica)
	ctx := context.Background()
	if _, err := repo.Get(ctx, "c", onlyOnReplica.ID); err != nil {
		t.Errorf("Get of a row only the replica has: %v; reads must go to the replica", err)
	}
	if page, _, err := repo.List(ctx, "c", 10, ""); err != nil || len(page) != 1 || page[0].ID != onlyOnReplica.ID {
		t.Errorf("List: %v, %v; want the replica's row", ids(page), err)
	}
}

func TestPayments_ReplicaFallsBackToPrimary(t *testing.T) {
	primary := open(t, testenv.NewDatabase(t, paymentsdb.Migrations))
	// A replica that cannot be reached: reads must still work.
	broken, err := postgres.Open("postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", postgres.PoolConfig{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broken.Close() })
	repo := paymentsdb.NewPayments(primary, broken)
	ctx := context.Background()
	p := claim(t, repo, newPayment("c", "k"), "t", lease).Payment
	if _, err := repo.Get(ctx, "c", p.ID); err != nil {
		t.Errorf("Get with a broken replica: %v", err)
	}
	if page, _, err := repo.List(ctx, "c", 10, ""); err != nil || len(page) != 1 {
		t.Errorf("List with a broken replica: %d payments, %v", len(page), err)
	}
}

func TestPayments_LaggingReplicaFallsBackToPrimary(t *testing.T) {
	// A replica that has not caught up: a database of its own, holding one
	// older payment the primary does not have, so that answering from it
	// shows.
	primaryPool, replicaPool := open(t, testenv.NewDatabase(t, paymentsdb.Migrations)), open(t, testenv.NewDatabase(t, paymentsdb.Migrations))
	stale := claim(t, paymentsdb.NewPayments(replicaPool, nil), newPayment("c", "replica-only"), "t", lease).Payment
	repo := paymentsdb.NewPayments(primaryPool, replicaPool)
	ctx := context.Background()
	older := claim(t, repo, newPayment("c", "k1"), "t", lease).Payment
	newer := claim(t, repo, newPayment("c", "k2"), "t", lease).Payment
	if _, err := repo.Get(ctx, "c", newer.ID); err != nil {
		t.Errorf("Get of a payment the replica lacks: %v", err)
	}
	page, _, err := repo.List(ctx, "c", 10, newer.ID)
	if err != nil || len(page) != 1 || page[0].ID != older.ID {
		t.Errorf("List after a cursor the replica lacks: %v, %v; want [%s] from the primary, not the replica's %s", ids(page), err, older.ID, stale.ID)
	}
	if _, _, err := repo.List(ctx, "c", 10, "pay_nobody"); !errors.Is(err, paymentsdb.ErrCursorNotFound) {
		t.Errorf("a cursor neither has: %v, want ErrCursorNotFound", err)
	}
}
