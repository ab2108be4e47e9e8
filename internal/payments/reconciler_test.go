package payments_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
)

func newReconciler(t *testing.T, f fixture, grace time.Duration) *payments.Reconciler {
	t.Helper()
	return newReconcilerOn(t, f, grace, prometheus.NewRegistry())
}

// newReconcilerOn is newReconciler with its metrics in reg.
func newReconcilerOn(t *testing.T, f fixture, grace time.Duration, reg prometheus.Registerer) *payments.Reconciler {
	t.Helper()
	r, err := payments.NewReconciler(f.svc, payments.ReconcilerConfig{
		Every: time.Hour, After: time.Millisecond, Grace: grace, Batch: 10, Timeout: 5 * time.Second,
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// leftProcessing creates a payment whose outcome the provider left unknown.
func leftProcessing(t *testing.T, f fixture, key string, amount int64, faults fakeprovider.Faults) shown {
	t.Helper()
	if err := f.fake.SetFaults(faults); err != nil {
		t.Fatal(err)
	}
	res, err := f.create(context.Background(), input(key, amount))
	if err != nil || res.Payment.Status != payments.StatusProcessing {
		t.Fatalf("Create = %+v, %v; want processing", res.Payment, err)
	}
	f.fake.ResetFaults()
	// Stale for the reconciler: its last attempt older than After.
	waitForDB(t, f.pool, "the attempt to age past After",
		`SELECT now() - attempted_at > interval '2 milliseconds' FROM idempotency_keys WHERE resource_id = $1`, res.Payment.ID)
	return res.Payment
}

func TestReconciler_SettlesAChargeWhoseAnswerWasLost(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	r := newReconciler(t, f, time.Hour)

	settled, err := r.RunOnce(context.Background())
	if err != nil || settled != 1 {
		t.Fatalf("RunOnce = %d, %v; want 1 settled", settled, err)
	}
	got, err := f.svc.Get(context.Background(), "client_a", p.ID)
	charges := f.fake.Charges()
	if err != nil || got.Status != payments.StatusSucceeded || len(charges) != 1 || got.ProviderChargeID != charges[0].ID {
		t.Fatalf("payment %+v (%v), charges %+v: want succeeded with the one charge", got, err, charges)
	}

	// The client's retry now replays what the reconciler stored: 201.
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || !retry.Replayed || retry.Response.Status != 201 {
		t.Fatalf("retry = %d replayed=%v, %v; want a 201 replay", retry.Response.Status, retry.Replayed, err)
	}
	if len(f.fake.Charges()) != 1 {
		t.Error("the retry charged again")
	}
}

func TestReconciler_SettlesADeclineWhoseAnswerWasLost(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := leftProcessing(t, f, "k", 1402, fakeprovider.Faults{ChargeThenErrorRate: 1})
	if _, err := newReconciler(t, f, time.Hour).RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, _ := f.svc.Get(context.Background(), "client_a", p.ID)
	if got.Status != payments.StatusFailed || got.FailureCode != "card_declined" {
		t.Fatalf("payment %+v, want failed, card_declined", got)
	}
}

func TestReconciler_FailsAPaymentWithoutChargeOnlyAfterTheGracePeriod(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	// The provider answered 503 without charging: unknown to us.
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ErrorRate: 1})

	within := newReconciler(t, f, time.Hour)
	if settled, err := within.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("within the grace period: RunOnce = %d, %v; want nothing settled", settled, err)
	}
	if got, _ := f.svc.Get(context.Background(), "client_a", p.ID); got.Status != payments.StatusProcessing {
		t.Fatalf("within the grace period the payment became %s", got.Status)
	}
	// Only one replica reconciles at a time: this one must resign first.
	within.Run(cancelled())

	after := newReconciler(t, f, 5*time.Millisecond)
	if settled, err := after.RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("after the grace period: RunOnce = %d, %v; want 1 settled", settled, err)
	}
	got, _ := f.svc.Get(context.Background(), "client_a", p.ID)
	if got.Status != payments.StatusFailed || got.FailureCode != payments.FailureNoCharge {
		t.Fatalf("payment %+v, want failed with %s", got, payments.FailureNoCharge)
	}
	if n := len(f.fake.Charges()); n != 0 {
		t.Errorf("%d charges: the reconciler must only look, never charge", n)
	}

	// The key's answer is final now: a 402 saying nothing was paid.
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || !retry.Replayed || retry.Response.Status != 402 {
		t.Fatalf("retry = %d replayed=%v, %v; want the stored 402", retry.Response.Status, retry.Replayed, err)
	}
	var body struct{ Type string }
	if err := json.Unmarshal(retry.Response.Body, &body); err != nil || body.Type == "" {
		t.Errorf("402 body %s (%v)", retry.Response.Body, err)
	}
}

func TestReconciler_OnlyOneReplicaIsActive(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	leftProcessing(t, f, "k1", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	a, b := newReconciler(t, f, time.Hour), newReconciler(t, f, time.Hour)
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	leftProcessing(t, f, "k2", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	if settled, err := b.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("the second replica reconciled %d payments (%v) while the first leads", settled, err)
	}
	a.Run(cancelled()) // a stops: it resigns
	if settled, err := b.RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("after the leader stopped: RunOnce = %d, %v; want 1", settled, err)
	}
}

// A retry takes the payment between the reconciler's scan and its lease:
// the reconciler leaves it to the retry, without a word to the provider.
func TestReconciler_LeavesAPaymentARetryIsDriving(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	reg := prometheus.NewRegistry()
	r, err := payments.NewReconciler(f.svc, payments.ReconcilerConfig{
		Every: time.Hour, After: time.Millisecond, Grace: time.Hour, Batch: 10, Timeout: 5 * time.Second,
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	// Admit runs after the scan and before the lease: the retry's moment.
	var lookups atomic.Int64
	f.svc.Provider = &retryArrives{Provider: f.svc.Provider, lookups: &lookups, arrive: func() {
		if _, err := f.pool.Exec(`UPDATE idempotency_keys SET lease_token = 'a retry', lease_expires_at = now() + interval '1 minute'
			WHERE resource_id = $1 AND (lease_expires_at IS NULL OR lease_expires_at <= now())`, p.ID); err != nil {
			t.Error(err)
		}
	}}
	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("RunOnce = %d, %v; a held payment must be left to its holder", settled, err)
	}
	if n := metricValue(t, reg, "reconciler_payments_total", "skipped"); n != 1 {
		t.Errorf("skipped = %v, want 1", n)
	}
	if n := lookups.Load(); n != 0 {
		t.Errorf("%d lookups of a payment the reconciler did not hold", n)
	}
	var holder string
	if err := f.pool.QueryRow(`SELECT lease_token FROM idempotency_keys WHERE resource_id = $1`, p.ID).Scan(&holder); err != nil || holder != "a retry" {
		t.Errorf("lease holder %q (%v), want the retry's", holder, err)
	}
}

// retryArrives runs arrive the first time the reconciler asks whether the
// provider would take a call, and counts lookups.
type retryArrives struct {
	payments.Provider
	lookups *atomic.Int64
	once    sync.Once
	arrive  func()
}

func (r *retryArrives) Admit() error { r.once.Do(r.arrive); return nil }

func (r *retryArrives) FindCharge(ctx context.Context, key string) (provider.Charge, bool, error) {
	r.lookups.Add(1)
	return r.Provider.FindCharge(ctx, key)
}

// metricValue reads the counter or gauge of reg named name whose label
// has the value label.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s with a label %q", name, label)
	return 0
}

// The leader reports what each scan leaves processing, of each kind; a
// replica that does not lead, or stops leading, reports none, so that
// max() across replicas is the leader's measure.
func TestReconciler_OnlyTheLeaderReportsTheBacklog(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	// Settled work is no backlog; work the provider never did stays
	// processing for the grace period (a day, here).
	paidFor := paid(t, f, "paid", 1000)
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ErrorRate: 1})
	if err := f.fake.SetFaults(fakeprovider.Faults{ErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	if resp, _, err := f.refund(ctx, paidFor.ID, "r", 300); err != nil || resp.Status != http.StatusAccepted {
		t.Fatalf("a refund answered 503: %d (%v); want 202, processing", resp.Status, err)
	}
	f.fake.ResetFaults()
	// Their last attempts: the payment's an hour ago, the refund's ten
	// minutes ago.
	if _, err := f.pool.Exec(`UPDATE idempotency_keys SET attempted_at = now() - CASE kind
		WHEN 'payment' THEN interval '1 hour' ELSE interval '10 minutes' END
		WHERE response_status IS NULL`); err != nil {
		t.Fatal(err)
	}
	left := map[string]time.Duration{payments.KindPayment: time.Hour, payments.KindRefund: 10 * time.Minute}
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	a, b := newReconcilerOn(t, f, 24*time.Hour, regA), newReconcilerOn(t, f, 24*time.Hour, regB)
	wantBacklog(t, "a, before any scan", regA, nil)

	if settled, err := a.RunOnce(ctx); err != nil || settled != 0 {
		t.Fatalf("a.RunOnce = %d, %v; want nothing settled within the grace period", settled, err)
	}
	wantBacklog(t, "a, leading", regA, left)
	if _, err := b.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	wantBacklog(t, "b, while a leads", regB, nil)

	// a's session dies (a network cut): b takes over, and a, finding its
	// lock gone, stops reporting.
	if _, err := f.pool.Exec(`SELECT pg_terminate_backend(pid, 5000) FROM pg_locks
		WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	wantBacklog(t, "b, leading after a died", regB, left)
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	wantBacklog(t, "a, after losing the lead", regA, nil)

	// b stops: it resigns, and stops reporting.
	b.Run(cancelled())
	wantBacklog(t, "b, after resigning", regB, nil)
	if got, _ := f.svc.Get(ctx, "client_a", p.ID); got.Status != payments.StatusProcessing {
		t.Errorf("the payment became %s within the grace period", got.Status)
	}
}

// wantBacklog checks that reg reports, for each kind, one processing
// resource last attempted left ago (within a minute, the test's own time),
// or nothing for the kinds left does not name.
func wantBacklog(t *testing.T, who string, reg *prometheus.Registry, left map[string]time.Duration) {
	t.Helper()
	for _, kind := range []string{payments.KindPayment, payments.KindRefund} {
		age, pending := left[kind]
		n, oldest := metricValue(t, reg, "reconciler_backlog", kind), metricValue(t, reg, "reconciler_oldest_seconds", kind)
		switch {
		case !pending && (n != 0 || oldest != 0):
			t.Errorf("%s: %s backlog %v, oldest %vs; want none reported", who, kind, n, oldest)
		case pending && (n != 1 || oldest < age.Seconds() || oldest > (age+time.Minute).Seconds()):
			t.Errorf("%s: %s backlog %v, oldest %vs; want 1, %v old", who, kind, n, oldest, age)
		}
	}
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestReconciler_WaitsWhileTheProviderIsRefused(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := leftProcessing(t, f, "k", 1000, fakeprovider.Faults{ChargeThenErrorRate: 1})
	r := newReconciler(t, f, time.Hour)
	open := f.svc.Provider
	f.svc.Provider = refusing{open} // the breaker is open

	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 0 {
		t.Fatalf("RunOnce while refused = %d, %v; want nothing settled", settled, err)
	}
	if got, _ := f.svc.Get(context.Background(), "client_a", p.ID); got.Status != payments.StatusProcessing {
		t.Fatalf("the payment became %s while the provider was refused", got.Status)
	}

	f.svc.Provider = open // the breaker closed again
	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("RunOnce after = %d, %v; want 1 settled", settled, err)
	}
}

// The provider takes a charge request up late: it sat in the provider's
// backlog past the attempt's deadline, and past the reconciler's verdict
// that no charge exists (the payment failed). The request carries its
// expiry, which has passed, so the provider does nothing: the failed
// payment is never charged. Without the expiry this was a charge that no
// payment accounts for, found by the game day's slow-provider run.
func TestReconciler_AChargeTheProviderTakesUpAfterTheVerdictIsNeverMade(t *testing.T) {
	fake := fakeprovider.New()
	arrived, release, finished := make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	var once sync.Once
	backlog := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/charges" {
			arrived <- struct{}{} // one attempt: the fixture's client does not retry
			<-release             // in the backlog until the verdict is in
			defer once.Do(func() { close(finished) })
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(backlog.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release) // a failed test must not leave the handler blocking Close
		}
	})
	f := newFixture(t, backlog.URL, 100*time.Millisecond)

	res, err := f.create(context.Background(), input("k", 1000))
	if err != nil || res.Payment.Status != payments.StatusProcessing {
		t.Fatalf("Create = %+v, %v; want processing (the provider never answered)", res.Payment, err)
	}
	receive(t, arrived, "the charge request to reach the provider")
	waitForDB(t, f.pool, "the attempt to age past After",
		`SELECT now() - attempted_at > interval '2 milliseconds' FROM idempotency_keys WHERE resource_id = $1`, res.Payment.ID)
	r := newReconciler(t, f, time.Millisecond)
	if settled, err := r.RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("RunOnce = %d, %v; want the payment settled", settled, err)
	}
	if got, err := f.svc.Get(context.Background(), "client_a", res.Payment.ID); err != nil || got.Status != payments.StatusFailed {
		t.Fatalf("after the verdict: %+v, %v; want failed (no charge found)", got, err)
	}

	close(release) // the provider takes the request up now
	receive(t, finished, "the provider to be done with the request")
	if charges := fake.Charges(); len(charges) != 0 {
		t.Errorf("the provider charged %+v after the payment was failed: a charge no payment accounts for", charges)
	}
}

// receive waits for c, failing the test after 10 s rather than hanging it.
func receive(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
