package payments_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// hooked calls the real provider, then runs a hook before it returns the
// answer: the test decides what happens between the provider answering
// and the caller learning of it.
type hooked struct {
	payments.Provider
	afterCharge func(ctx context.Context)
	afterFind   func(ctx context.Context)
}

func (h hooked) Charge(ctx context.Context, req provider.ChargeRequest) (provider.Charge, error) {
	ch, err := h.Provider.Charge(ctx, req)
	if h.afterCharge != nil {
		h.afterCharge(ctx)
	}
	return ch, err
}

func (h hooked) FindCharge(ctx context.Context, key string) (provider.Charge, bool, error) {
	ch, found, err := h.Provider.FindCharge(ctx, key)
	if h.afterFind != nil {
		h.afterFind(ctx)
	}
	return ch, found, err
}

// waitForDB polls a boolean query until it is true: for conditions of the
// database's clock, such as a lease having expired.
func waitForDB(t *testing.T, pool *sql.DB, what, query string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var ok bool
		if err := pool.QueryRow(query, args...).Scan(&ok); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The reconciler looks a payment up and finds no charge; its lookup
// outlasts its lease; a client's retry takes the payment over and the
// provider charges it; only then does the reconciler act on the absence it
// saw. The retry's charge must win: the reconciler's "no charge" verdict is
// stale, and committing it would tell the client nothing was paid.
func TestReconciler_ARetryChargingDuringTheLookupWins(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	// The provider answered 503 without charging: processing, no charge.
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ErrorRate: 1})
	r := newReconciler(t, f, time.Millisecond)

	looked, resumeReconciler := make(chan struct{}), make(chan struct{})
	charged, resumeRetry := make(chan struct{}), make(chan struct{})
	f.svc.Provider = hooked{
		Provider:    f.svc.Provider,
		afterFind:   func(context.Context) { close(looked); <-resumeReconciler },
		afterCharge: func(context.Context) { close(charged); <-resumeRetry },
	}

	type runResult struct {
		settled int
		err     error
	}
	reconciled := make(chan runResult, 1)
	go func() {
		n, err := r.RunOnce(context.Background())
		reconciled <- runResult{n, err}
	}()
	<-looked // the reconciler holds the lease and saw no charge

	// Its lookup outlasts its lease: expire it, as time would.
	if _, err := f.pool.Exec(`UPDATE idempotency_keys SET lease_expires_at = now() WHERE resource_id = $1`, p.ID); err != nil {
		t.Fatal(err)
	}
	type createResult struct {
		res result
		err error
	}
	retried := make(chan createResult, 1)
	go func() {
		res, err := f.create(context.Background(), input("k", 1000))
		retried <- createResult{res, err}
	}()
	<-charged // the retry took the payment over, and the provider charged it

	// The retry's attempt is older than the reconciler's grace period, so
	// that the grace period cannot be what saves the payment.
	waitForDB(t, f.pool, "the retry's attempt to age past the grace period",
		`SELECT now() - attempted_at > interval '1 millisecond' FROM idempotency_keys WHERE resource_id = $1`, p.ID)
	close(resumeReconciler)
	rr := <-reconciled
	close(resumeRetry)
	cr := <-retried

	if rr.err != nil || rr.settled != 0 {
		t.Errorf("RunOnce = %d settled, %v; want nothing settled: the payment was no longer the reconciler's", rr.settled, rr.err)
	}
	if cr.err != nil || cr.res.Response.Status != http.StatusCreated || cr.res.Payment.Status != payments.StatusSucceeded {
		t.Fatalf("the retry got %d %s (%v); want 201 succeeded", cr.res.Response.Status, cr.res.Response.Body, cr.err)
	}
	got, err := f.svc.Get(context.Background(), "client_a", p.ID)
	charges := f.fake.Charges()
	if err != nil || got.Status != payments.StatusSucceeded || len(charges) != 1 || got.ProviderChargeID != charges[0].ID {
		t.Fatalf("payment %+v (%v), charges %+v: want succeeded with the one charge", got, err, charges)
	}
}

// A reconciler whose lease was taken over by a retry never settles the
// payment, whatever the provider told it: only the current holder may.
func TestReconciler_SettlesOnlyUnderItsOwnLease(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	r := newReconciler(t, f, time.Hour)
	f.svc.Provider = hooked{Provider: f.svc.Provider, afterFind: func(context.Context) {
		// While the reconciler looks, its lease expires and a retry
		// takes the payment over (and is still at the provider).
		if _, err := f.pool.Exec(`UPDATE idempotency_keys SET lease_token = 'a retry', lease_expires_at = now() + interval '1 minute' WHERE resource_id = $1`, p.ID); err != nil {
			t.Error(err)
		}
	}}
	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("RunOnce = %d, %v; want nothing settled", settled, err)
	}
	if got, _ := f.svc.Get(context.Background(), "client_a", p.ID); got.Status != payments.StatusProcessing {
		t.Fatalf("the payment became %s under another's lease", got.Status)
	}
}

// The provider's answer arrives as the request's deadline passes. It was
// received, so it must be recorded: the writes after the call have a budget
// of their own that the deadline does not cancel.
func TestCreate_AnAnswerArrivingAtTheDeadlineIsRecorded(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	f.svc.Provider = hooked{Provider: f.svc.Provider, afterCharge: func(ctx context.Context) {
		<-ctx.Done() // the answer is in hand; the deadline passes before we act on it
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := f.create(ctx, input("k", 1000))
	if err != nil || res.Response.Status != http.StatusCreated || res.Payment.Status != payments.StatusSucceeded {
		t.Fatalf("Create = %d %s (%v); want 201 succeeded", res.Response.Status, res.Response.Body, err)
	}
	var leaseHeld bool
	if err := f.pool.QueryRow(`SELECT lease_token IS NOT NULL FROM idempotency_keys WHERE resource_id = $1`, res.Payment.ID).Scan(&leaseHeld); err != nil || leaseHeld {
		t.Fatalf("lease still held: %v (%v)", leaseHeld, err)
	}
	f.svc.Provider = f.svc.Provider.(hooked).Provider
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || !retry.Replayed || retry.Response.Status != http.StatusCreated {
		t.Fatalf("an immediate retry: %d replayed=%v (%v); want the stored 201", retry.Response.Status, retry.Replayed, err)
	}
}

// An answer whose deadline passed on the way back leaves nothing held
// either when the outcome is unknown: the lease is released at once, so a
// retry can settle the payment without waiting for it to expire.
func TestCreate_AnUnknownOutcomeAtTheDeadlineReleasesTheLease(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	if err := f.fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	f.svc.Provider = hooked{Provider: f.svc.Provider, afterCharge: func(ctx context.Context) { <-ctx.Done() }}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	res, err := f.create(ctx, input("k", 1000))
	if err != nil || res.Response.Status != http.StatusAccepted {
		t.Fatalf("Create = %d (%v); want 202", res.Response.Status, err)
	}
	f.fake.ResetFaults()
	f.svc.Provider = f.svc.Provider.(hooked).Provider
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || retry.Response.Status != http.StatusCreated {
		t.Fatalf("an immediate retry: %d (%v); want 201, not 409 for a lease nobody uses", retry.Response.Status, err)
	}
}

// Redis loses the request's in-flight lock (a flush, a restart, a
// failover) after the request took it and before it charges. Postgres,
// which still says the payment is this request's, decides: the request
// completes, and the key is not stranded behind a lease nobody drives.
func TestCreate_RedisLosingTheLockMidRequestDecidesNothing(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name: "redis", Window: 10 * time.Second, MinRequests: 5, FailureRatio: 0.5, OpenTimeout: time.Second, HalfOpenProbes: 1,
	}, idempotency.RedisOutcome, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := idempotency.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	guard := &idempotency.Guard{
		Cache:   idempotency.NewCache(rdb, idempotency.CacheSettings{Prefix: "test", ResponseTTL: time.Hour, Timeout: time.Second}, breaker),
		Metrics: metrics, Log: log, LockTTL: time.Minute,
	}
	flush := true
	handler := idempotency.Handle(guard, idempotency.Route[payments.CreateRequest]{
		Pattern:  "/v1/payments",
		Validate: (*payments.CreateRequest).Validate,
		Do: func(ctx context.Context, req idempotency.Request, body *payments.CreateRequest) (idempotency.Response, error) {
			if flush { // after the fast path took the lock, before the charge
				if err := rdb.FlushDB(ctx).Err(); err != nil {
					t.Error(err)
				}
			}
			return f.svc.Create(ctx, req, *body, "req")
		},
		Fail: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, err.Error())
		},
	})
	post := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/v1/payments", strings.NewReader(`{"amount":1000,"currency":"usd"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "k")
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec
	}
	first := post()
	if first.Code != http.StatusCreated {
		t.Fatalf("with the Redis lock lost mid-request: %d %s; want 201", first.Code, first.Body)
	}
	flush = false
	again := post()
	if again.Code != http.StatusCreated || again.Body.String() != first.Body.String() || again.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the retry: %d %v %s; want the first answer replayed", again.Code, again.Header(), again.Body)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

// loseAnswerOf makes the first statement containing match run, and then
// look failed to its caller, as a connection cut after the commit would.
func loseAnswerOf(f fixture, match string) {
	var once sync.Once
	f.spy.After(func(query string) error {
		var lost error
		if strings.Contains(query, match) {
			once.Do(func() { lost = io.ErrUnexpectedEOF })
		}
		return lost
	})
}

// The claim commits, and its answer is lost: the request fails, unsure
// whether it holds the key. Nothing was sent under its token, so it undoes
// the claim, and the key is usable at once.
func TestCreate_AClaimWhoseAnswerIsLostIsUndone(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	loseAnswerOf(f, "INSERT INTO idempotency_keys")
	if _, err := f.create(context.Background(), input("k", 1000)); !errors.Is(err, payments.ErrUnavailable) {
		t.Fatalf("Create with the claim's answer lost: %v, want ErrUnavailable", err)
	}
	f.spy.After(nil)
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || retry.Response.Status != http.StatusCreated {
		t.Fatalf("an immediate retry: %d (%v); want 201, not a 409 behind the lost claim's lease", retry.Response.Status, err)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

// The reconciler takes a payment's lease, and the answer is lost: it gives
// the lease back rather than leave retries facing a 409 for a whole lease.
func TestReconciler_ALeaseTakenWithItsAnswerLostIsGivenBack(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	r := newReconciler(t, f, time.Hour)
	loseAnswerOf(f, "SET lease_token = $3, lease_expires_at")
	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("RunOnce = %d, %v; want nothing settled", settled, err)
	}
	f.spy.After(nil)
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || retry.Response.Status != http.StatusCreated {
		t.Fatalf("a retry after the lost lease: %d (%v); want 201", retry.Response.Status, err)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

// Payments the reconciler cannot settle yet (the provider answers a status
// it does not know) must not hold up, scan after scan, those it can.
func TestReconciler_PaymentsItCannotSettleDoNotStarveTheOthers(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	stuck := leftProcessing(t, f, "stuck", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	next := leftProcessing(t, f, "next", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	r, err := payments.NewReconciler(f.svc, payments.ReconcilerConfig{
		Every: time.Hour, After: time.Millisecond, Grace: time.Hour, Batch: 1, Timeout: 5 * time.Second,
	}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	real := f.svc.Provider
	f.svc.Provider = unknownStatusFor{Provider: real, id: stuck.ID}

	for range 2 {
		if _, err := r.RunOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := f.svc.Get(context.Background(), "client_a", next.ID); got.Status != payments.StatusSucceeded {
		t.Fatalf("after two scans of one payment each, the settleable payment is %s; want succeeded", got.Status)
	}
	if got, _ := f.svc.Get(context.Background(), "client_a", stuck.ID); got.Status != payments.StatusProcessing {
		t.Fatalf("the stuck payment became %s", got.Status)
	}
}

// unknownStatusFor answers a status nobody knows for one payment's charge.
type unknownStatusFor struct {
	payments.Provider
	id string
}

func (u unknownStatusFor) FindCharge(ctx context.Context, key string) (provider.Charge, bool, error) {
	if key == u.id {
		return provider.Charge{ID: "ch_x", Status: "pending"}, true, nil
	}
	return u.Provider.FindCharge(ctx, key)
}

// A failover cuts the settle off: its statement commits on the old
// primary, and the connection is reset before the answer comes back. The
// provider has charged; the answer must not be lost. The service retries
// the settle, which finds the key complete and returns the stored answer:
// 201, settled, one charge.
func TestCreate_ASettleCutOffByAFailoverIsRetriedAndRecorded(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	var once sync.Once
	cut := 0
	f.spy.After(func(query string) error {
		var err error
		if strings.Contains(query, "SET response_status") {
			once.Do(func() {
				cut++
				err = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
			})
		}
		return err
	})
	got, err := f.create(context.Background(), input("k", 1000))
	if err != nil || got.Response.Status != http.StatusCreated {
		t.Fatalf("a settle cut off by a failover: %d %s (%v); want 201", got.Response.Status, got.Response.Body, err)
	}
	if cut != 1 {
		t.Fatalf("the settle was cut %d times: the test set nothing up", cut)
	}
	var status string
	if err := f.pool.QueryRow(`SELECT status FROM payments WHERE id = $1`, got.Payment.ID).Scan(&status); err != nil || status != "succeeded" {
		t.Errorf("payment %s: %q, %v; want succeeded", got.Payment.ID, status, err)
	}
	f.spy.After(nil)
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || !retry.Response.Replayed || !bytes.Equal(retry.Response.Body, got.Response.Body) {
		t.Errorf("the client's retry: %d replayed=%v (%v); want the same answer, replayed", retry.Response.Status, retry.Response.Replayed, err)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

// The same failover, before the settle reached the database: 25006, the
// old primary demoted and refusing writes. The retry lands on a fresh
// connection and records the answer.
func TestCreate_ASettleRefusedByADemotedPrimaryIsRetried(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	refused := 0
	f.spy.Before(func(query string) error {
		if strings.Contains(query, "SET response_status") && refused == 0 {
			refused++
			return &pq.Error{Severity: "ERROR", Code: "25006", Message: "cannot execute UPDATE in a read-only transaction"}
		}
		return nil
	})
	got, err := f.create(context.Background(), input("k", 1000))
	if err != nil || got.Response.Status != http.StatusCreated || refused != 1 {
		t.Fatalf("a settle refused once by a read-only primary: %d %s (%v), refused %d times; want 201 after one refusal", got.Response.Status, got.Response.Body, err, refused)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}
