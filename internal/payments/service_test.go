package payments_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/paymentsapi"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type fixture struct {
	svc   *payments.Service
	store *paymentsdb.Store
	fake  *fakeprovider.Provider
	url   string  // the provider's
	pool  *sql.DB // for tests that play time forward (expire a lease)
	spy   *testenv.SQLSpy
	reg   *prometheus.Registry
}

// newFixture wires the service to a fresh database and an in-process fake
// provider reached over real HTTP.
func newFixture(t *testing.T, providerURL string, attemptTimeout time.Duration) fixture {
	t.Helper()
	pool, spy := testenv.OpenSpied(t, testenv.NewDatabase(t, idempotency.Migrations, paymentsdb.Migrations))
	var fake *fakeprovider.Provider
	if providerURL == "" {
		fake, providerURL = fakeprovider.Start(t)
	}
	client, err := provider.NewClient(provider.Config{BaseURL: providerURL, AttemptTimeout: attemptTimeout})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics, err := idempotency.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	store := paymentsdb.New(pool, nil, &idempotency.Keys{Lease: time.Minute, Metrics: metrics})
	svc := payments.NewService(payments.Config{
		Store:         store,
		Provider:      client,
		Views:         paymentsapi.Views{ProblemTypes: "https://payservice.example/problems/"},
		Lease:         time.Minute,
		SettleTimeout: time.Second,
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return fixture{svc: svc, store: store, fake: fake, url: providerURL, pool: pool, spy: spy, reg: reg}
}

// in is a payment request with its key, as the API hands it over.
type in struct {
	req  idempotency.Request
	body payments.CreateRequest
}

func input(key string, amount int64) in {
	return in{
		req:  idempotency.Request{Scope: "client_a", Key: key, Fingerprint: "fp-" + key},
		body: payments.CreateRequest{Amount: amount, Currency: "USD"},
	}
}

// shown is a payment as an answer shows it.
type shown struct {
	ID               string          `json:"id"`
	Status           payments.Status `json:"status"`
	Currency         string          `json:"currency"`
	ProviderChargeID string          `json:"provider_charge_id"`
	FailureCode      string          `json:"failure_code"`
}

// result is Create's answer, with the payment it shows.
type result struct {
	Response idempotency.Response
	Payment  shown
	Replayed bool
}

func (f fixture) create(ctx context.Context, i in) (result, error) {
	resp, err := f.svc.Create(ctx, i.req, i.body, "req")
	if err != nil {
		return result{}, err
	}
	res := result{Response: resp, Replayed: resp.Replayed}
	// A 402 shows the payment inside its problem.
	var problem struct {
		Payment *shown `json:"payment"`
	}
	if err := json.Unmarshal(resp.Body, &problem); err == nil && problem.Payment != nil {
		res.Payment = *problem.Payment
	} else if err := json.Unmarshal(resp.Body, &res.Payment); err != nil {
		return result{}, fmt.Errorf("answer %s: %w", resp.Body, err)
	}
	return res, nil
}

// hasKey reports whether the client's key has a record.
func (f fixture) hasKey(t *testing.T, key string) bool {
	t.Helper()
	has, err := f.store.HasKey(context.Background(), idempotency.Request{Scope: "client_a", Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return has
}

func TestCreate_ChargesOnceAndReplays(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	first, err := f.create(ctx, input("k1", 1000))
	if err != nil {
		t.Fatal(err)
	}
	p := first.Payment
	if p.Status != payments.StatusSucceeded || p.ProviderChargeID == "" || p.Currency != "usd" || first.Replayed {
		t.Fatalf("first Create = %+v", first)
	}
	again, err := f.create(ctx, input("k1", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Replayed || again.Payment.ID != p.ID || again.Payment.ProviderChargeID != p.ProviderChargeID {
		t.Fatalf("replay = %+v, want payment %s replayed", again, p.ID)
	}
	if first.Response.Status != 201 || string(again.Response.Body) != string(first.Response.Body) {
		t.Errorf("replay answered %d %s; want the first answer's bytes, 201 %s", again.Response.Status, again.Response.Body, first.Response.Body)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("provider has %d charges, want 1", n)
	}
	if got := f.fake.ChargesByKey(p.ID); len(got) != 1 {
		t.Errorf("the provider key is not the payment id: %+v", f.fake.Charges())
	}
}

func TestCreate_ConcurrentDuplicatesChargeOnce(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	// The first charge is held at the provider until every duplicate has
	// been answered: all of them meet it in flight.
	var calls atomic.Int64
	held, release := make(chan struct{}), make(chan struct{})
	f.svc.Provider = hooked{Provider: f.svc.Provider, afterCharge: func(context.Context) {
		if calls.Add(1) == 1 {
			close(held)
			<-release
		}
	}}
	const n = 20
	errs := make(chan error, n)
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			res, err := f.create(context.Background(), input("dup", 1000))
			if err != nil {
				errs <- err
				return
			}
			ids <- res.Payment.ID
		})
	}
	<-held
	for range n - 1 {
		if err := <-errs; !errors.Is(err, idempotency.ErrInFlight) {
			t.Errorf("a duplicate while the first was in flight: %v, want ErrInFlight", err)
		}
	}
	close(release)
	wg.Wait()
	close(ids)
	if len(ids) != 1 {
		t.Fatalf("%d duplicates completed, want the first only", len(ids))
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("the provider was called %d times, want once", c)
	}
	if c := len(f.fake.Charges()); c != 1 {
		t.Errorf("provider has %d charges, want 1", c)
	}
}

func TestCreate_DeclineFailsThePayment(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	res, err := f.create(context.Background(), input("k", 402))
	if err != nil {
		t.Fatal(err)
	}
	if res.Payment.Status != payments.StatusFailed || res.Payment.FailureCode != "card_declined" {
		t.Fatalf("declined payment = %+v", res.Payment)
	}
}

func TestCreate_UnknownOutcomeLeavesProcessing(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	if err := f.fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	res, err := f.create(context.Background(), input("k", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if res.Payment.Status != payments.StatusProcessing || res.Response.Status != 202 {
		t.Fatalf("status %s (%d), want processing (202): a 500 after charging is not a failure", res.Payment.Status, res.Response.Status)
	}
	stored, err := f.svc.Get(context.Background(), "client_a", res.Payment.ID)
	if err != nil || stored.Status != payments.StatusProcessing {
		t.Fatalf("stored payment = %+v, %v", stored, err)
	}

	// A retry with the same key drives the provider again, with the same
	// provider key, and answers with the settled result: one charge.
	f.fake.ResetFaults()
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil {
		t.Fatal(err)
	}
	charges := f.fake.Charges()
	if retry.Payment.Status != payments.StatusSucceeded || retry.Response.Status != 201 || retry.Replayed {
		t.Fatalf("retry = %d %+v, want 201 succeeded, not a replay", retry.Response.Status, retry.Payment)
	}
	if len(charges) != 1 || retry.Payment.ProviderChargeID != charges[0].ID || charges[0].IdempotencyKey != res.Payment.ID {
		t.Fatalf("charges %+v, payment %+v: want one charge, keyed by the payment id", charges, retry.Payment)
	}
}

func TestCreate_UnsentChargeFreesTheKey(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close()
	f := newFixture(t, down, time.Second)
	_, err = f.create(context.Background(), input("k", 1000))
	if !errors.Is(err, payments.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	page, err := f.svc.List(context.Background(), "client_a", 10, "")
	if err != nil || len(page.Payments) != 0 {
		t.Fatalf("an unsent payment was kept: %+v, %v", page.Payments, err)
	}

	// The provider is back: the same key pays at once, as a new payment,
	// not a 409 behind a lease nor a replay of the failure.
	fake, up := fakeprovider.Start(t)
	client, err := provider.NewClient(provider.Config{BaseURL: up, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.Provider = client
	retry, err := f.create(context.Background(), input("k", 1000))
	if err != nil || retry.Replayed || retry.Response.Status != 201 {
		t.Fatalf("the key after the unsent charge: %d replayed=%v (%v); want a fresh 201", retry.Response.Status, retry.Replayed, err)
	}
	if n := len(fake.Charges()); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

func TestCreate_KeyReusedForAnotherRequest(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	if _, err := f.create(ctx, input("k", 1000)); err != nil {
		t.Fatal(err)
	}
	other := input("k", 2000)
	other.req.Fingerprint = "another request"
	if _, err := f.create(ctx, other); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Fatalf("err = %v, want ErrKeyReused", err)
	}
	if n := len(f.fake.Charges()); n != 1 {
		t.Errorf("provider has %d charges, want 1", n)
	}
}

func TestCreate_InvalidRequestWritesNothing(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	bad := input("k", 0)
	var verr *payments.ValidationError
	if _, err := f.create(context.Background(), bad); !errors.As(err, &verr) {
		t.Fatalf("err = %v, want a ValidationError", err)
	}
	if f.hasKey(t, "k") {
		t.Error("an invalid request was stored")
	}
	if n := len(f.fake.Charges()); n != 0 {
		t.Errorf("an invalid request reached the provider")
	}
}

func TestCreate_TextPostgresCannotStoreIsInvalidNotUnavailable(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	nul := input("k", 1000)
	nul.body.Metadata = payments.Metadata{"k": "a\x00b"}
	var verr *payments.ValidationError
	if _, err := f.create(ctx, nul); !errors.As(err, &verr) {
		t.Fatalf("metadata with NUL: %v, want a ValidationError (the insert would fail forever)", err)
	}
	// Ids and cursors no payment can have are answered without asking.
	for _, id := range []string{"pay_\x00", "pay_\xff"} {
		if _, err := f.svc.Get(ctx, "client_a", id); !errors.Is(err, payments.ErrNotFound) {
			t.Errorf("Get(%q): %v, want ErrNotFound", id, err)
		}
		if _, err := f.svc.List(ctx, "client_a", 10, id); !errors.Is(err, payments.ErrBadCursor) {
			t.Errorf("List after %q: %v, want ErrBadCursor", id, err)
		}
	}
}

func TestCreate_ClientHangingUpDoesNotAbandonTheCharge(t *testing.T) {
	// The client hangs up exactly while the provider call is in flight:
	// the provider cancels the request's context as the charge arrives.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := fakeprovider.New()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			cancel()
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f := newFixture(t, srv.URL, 5*time.Second)

	res, err := f.create(ctx, input("k", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() == nil {
		t.Fatal("the provider never saw the charge, so the client never hung up")
	}
	if res.Payment.Status != payments.StatusSucceeded || len(fake.Charges()) != 1 {
		t.Fatalf("status %s and %d charges after the client hung up, want succeeded with 1: the charge must complete",
			res.Payment.Status, len(fake.Charges()))
	}
}

// refusing is a provider whose protections refuse everything.
type refusing struct{ payments.Provider }

func (refusing) Admit() error { return errors.New("bulkhead full") }

func TestCreate_ShedsNewPaymentsBeforeWritingWhileTheProviderRefuses(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	done, err := f.create(ctx, input("done", 1000))
	if err != nil {
		t.Fatal(err)
	}
	f.svc.Provider = refusing{f.svc.Provider}

	if _, err := f.create(ctx, input("new", 1000)); !errors.Is(err, payments.ErrUnavailable) {
		t.Fatalf("a new payment while refusing: %v, want ErrUnavailable", err)
	}
	if f.hasKey(t, "new") {
		t.Error("a shed payment was written")
	}
	replay, err := f.create(ctx, input("done", 1000))
	if err != nil || !replay.Replayed || string(replay.Response.Body) != string(done.Response.Body) {
		t.Errorf("a replay while refusing: %+v, %v; want the stored answer", replay, err)
	}
}
