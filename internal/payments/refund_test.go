package payments_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
)

// refundShown is a refund as an answer shows it.
type refundShown struct {
	ID               string          `json:"id"`
	PaymentID        string          `json:"payment_id"`
	Amount           int64           `json:"amount"`
	Status           payments.Status `json:"status"`
	ProviderRefundID string          `json:"provider_refund_id"`
	FailureCode      string          `json:"failure_code"`
}

func (f fixture) refund(ctx context.Context, paymentID, key string, amount int64) (idempotency.Response, refundShown, error) {
	req := idempotency.Request{Scope: "client_a", Key: key, Fingerprint: fmt.Sprintf("fp-%s-%s-%d", paymentID, key, amount)}
	resp, err := f.svc.Refund(ctx, req, paymentID, payments.RefundRequest{Amount: amount, Reason: "test"}, "req")
	if err != nil {
		return resp, refundShown{}, err
	}
	var shown refundShown
	var problem struct {
		Refund *refundShown `json:"refund"`
	}
	if json.Unmarshal(resp.Body, &problem) == nil && problem.Refund != nil {
		shown = *problem.Refund
	} else if err := json.Unmarshal(resp.Body, &shown); err != nil {
		return resp, refundShown{}, fmt.Errorf("answer %s: %w", resp.Body, err)
	}
	return resp, shown, nil
}

// paid creates a succeeded payment of amount.
func paid(t *testing.T, f fixture, key string, amount int64) shown {
	t.Helper()
	res, err := f.create(context.Background(), input(key, amount))
	if err != nil || res.Payment.Status != payments.StatusSucceeded {
		t.Fatalf("payment: %+v, %v", res.Payment, err)
	}
	return res.Payment
}

// amounts returns a payment's refunded and reserved amounts.
func amounts(t *testing.T, f fixture, paymentID string) (refunded, pending int64) {
	t.Helper()
	if err := f.pool.QueryRow(`SELECT amount_refunded, amount_refund_pending FROM payments WHERE id = $1`, paymentID).Scan(&refunded, &pending); err != nil {
		t.Fatal(err)
	}
	return refunded, pending
}

func TestRefund_RefundsOnceAndReplays(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	ctx := context.Background()
	first, r, err := f.refund(ctx, p.ID, "r1", 400)
	if err != nil || first.Status != http.StatusCreated || r.Status != payments.StatusSucceeded || r.PaymentID != p.ID || r.ProviderRefundID == "" {
		t.Fatalf("refund: %d %s (%v)", first.Status, first.Body, err)
	}
	again, _, err := f.refund(ctx, p.ID, "r1", 400)
	if err != nil || !again.Replayed || string(again.Body) != string(first.Body) {
		t.Fatalf("retry: %d replayed=%v %s (%v); want the first answer replayed", again.Status, again.Replayed, again.Body, err)
	}
	if refunds := f.fake.RefundsByKey(r.ID); len(refunds) != 1 || len(f.fake.Refunds()) != 1 {
		t.Errorf("provider refunds %+v: want one, keyed by the refund id", f.fake.Refunds())
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 400 || pending != 0 {
		t.Errorf("payment refunded %d, pending %d; want 400, 0", refunded, pending)
	}
	got, err := f.svc.Get(ctx, "client_a", p.ID)
	if err != nil || got.AmountRefunded != 400 {
		t.Errorf("payment shows %d refunded (%v), want 400", got.AmountRefunded, err)
	}
	list, err := f.svc.Refunds(ctx, "client_a", p.ID)
	if err != nil || len(list) != 1 || list[0].ID != r.ID {
		t.Errorf("refunds of the payment: %+v, %v", list, err)
	}
	if _, _, err := f.refund(ctx, p.ID, "r1", 500); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Errorf("the key for another amount: %v, want ErrKeyReused", err)
	}
}

func TestRefund_RefusalsStoreNothingAndLeaveTheKeyUsable(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	ctx := context.Background()
	p := paid(t, f, "pay", 1000)
	declined, err := f.create(ctx, input("declined", 1402))
	if err != nil || declined.Payment.Status != payments.StatusFailed {
		t.Fatal(declined, err)
	}
	tests := []struct {
		name      string
		paymentID string
		scope     string
		amount    int64
		want      error
	}{
		{"more than the payment", p.ID, "client_a", 1001, payments.ErrRefundTooLarge},
		{"a failed payment", declined.Payment.ID, "client_a", 1, payments.ErrNotRefundable},
		{"no such payment", "pay_nope", "client_a", 1, payments.ErrNotFound},
		{"another client's payment", p.ID, "client_b", 1, payments.ErrNotFound},
	}
	for _, tt := range tests {
		req := idempotency.Request{Scope: tt.scope, Key: "k", Fingerprint: "fp-" + tt.name}
		if _, err := f.svc.Refund(ctx, req, tt.paymentID, payments.RefundRequest{Amount: tt.amount}, "req"); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		if has, _ := f.store.HasKey(ctx, req); has {
			t.Errorf("%s: the refused refund's key was stored", tt.name)
		}
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 0 || pending != 0 {
		t.Errorf("refusals left refunded %d, pending %d", refunded, pending)
	}
	// The same key, for what is left, goes through.
	if resp, _, err := f.refund(ctx, p.ID, "k", 1000); err != nil || resp.Status != http.StatusCreated {
		t.Errorf("the key after the refusals: %d (%v), want 201", resp.Status, err)
	}
	if n := len(f.fake.Refunds()); n != 1 {
		t.Errorf("%d provider refunds, want 1", n)
	}
}

// Fifty refunds of one payment at once, each with its own key: they never
// add up to more than the payment, whatever the interleaving, and whatever
// outcomes are left unknown (202, the amount still reserved) until the
// reconciler settles them. (A loaded machine makes some unknown too: the
// refunds queue on the payment's row lock, and a settle may outlast its
// budget.)
func TestRefund_ConcurrentRefundsNeverExceedThePayment(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	const n, each = 50, 30 // 1500 asked of 1000
	// A share refunded, then answered 500: unknown outcomes, whose amounts
	// stay reserved until the reconciler settles them.
	if err := f.fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 0.3}); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		created int
		unknown int
		refused int
		wg      sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			resp, _, err := f.refund(context.Background(), p.ID, fmt.Sprint("r", i), each)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, payments.ErrRefundTooLarge):
				refused++
			case err != nil:
				t.Errorf("refund %d: %v", i, err)
			case resp.Status == http.StatusCreated:
				created++
			case resp.Status == http.StatusAccepted:
				unknown++
			default:
				t.Errorf("refund %d: %d %s", i, resp.Status, resp.Body)
			}
		})
	}
	wg.Wait()
	refunded, pending := amounts(t, f, p.ID)
	t.Logf("%d refunds of %d asked of 1000: %d made, %d unknown, %d refused; refunded %d, pending %d", n, each, created, unknown, refused, refunded, pending)
	if created+unknown != 1000/each || refused != n-1000/each {
		t.Errorf("%d made, %d unknown and %d refused; want %d made or unknown and %d refused", created, unknown, refused, 1000/each, n-1000/each)
	}
	if refunded+pending > 1000 || refunded < int64(created*each) {
		t.Errorf("refunded %d and pending %d: above 1000, or less than the %d answered 201", refunded, pending, created*each)
	}

	f.fake.ResetFaults()
	if unknown > 0 {
		// Their leases would expire in a minute; the test expires them
		// now, and the reconciler looks the refunds up.
		if _, err := f.pool.Exec(`UPDATE idempotency_keys SET lease_token = NULL, lease_expires_at = NULL WHERE response_status IS NULL`); err != nil {
			t.Fatal(err)
		}
		waitForDB(t, f.pool, "the unknown refunds to be stale", `SELECT coalesce(bool_and(now() - attempted_at > interval '2 milliseconds'), true) FROM idempotency_keys WHERE response_status IS NULL`)
		r := newReconciler(t, f, time.Hour)
		for range n {
			if settled, err := r.RunOnce(context.Background()); err != nil {
				t.Fatal(err)
			} else if settled == 0 {
				break
			}
		}
	}
	refunded, pending = amounts(t, f, p.ID)
	total := int64(0)
	for _, r := range f.fake.Refunds() {
		total += r.Amount
	}
	if refunded != int64((created+unknown)*each) || pending != 0 || total != refunded || refunded > 1000 {
		t.Errorf("settled: refunded %d, pending %d, provider total %d; want %d, 0, the same, never above 1000", refunded, pending, total, (created+unknown)*each)
	}
}

func TestRefund_UnknownOutcomeIsSettledByTheReconciler(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	if err := f.fake.SetFaults(fakeprovider.Faults{ChargeThenErrorRate: 1}); err != nil {
		t.Fatal(err)
	}
	resp, r, err := f.refund(context.Background(), p.ID, "r", 300)
	if err != nil || resp.Status != http.StatusAccepted || r.Status != payments.StatusProcessing {
		t.Fatalf("refunded, then 500: %d %s (%v); want 202 processing", resp.Status, resp.Body, err)
	}
	f.fake.ResetFaults()
	if refunded, pending := amounts(t, f, p.ID); refunded != 0 || pending != 300 {
		t.Fatalf("while unknown: refunded %d, pending %d; want 0, 300 reserved", refunded, pending)
	}
	waitForDB(t, f.pool, "the refund to be stale", `SELECT now() - attempted_at > interval '2 milliseconds' FROM idempotency_keys WHERE resource_id = $1`, r.ID)
	if settled, err := newReconciler(t, f, time.Hour).RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("RunOnce = %d, %v; want the refund settled", settled, err)
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 300 || pending != 0 {
		t.Errorf("after reconciliation: refunded %d, pending %d; want 300, 0", refunded, pending)
	}
	again, _, err := f.refund(context.Background(), p.ID, "r", 300)
	if err != nil || again.Status != http.StatusCreated || !again.Replayed {
		t.Errorf("the client's retry: %d replayed=%v (%v); want the reconciled 201", again.Status, again.Replayed, err)
	}
	if n := len(f.fake.Refunds()); n != 1 {
		t.Errorf("%d provider refunds, want 1", n)
	}
}

func TestRefund_WithoutARefundAfterTheGracePeriodFailsAndFreesTheAmount(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	if err := f.fake.SetFaults(fakeprovider.Faults{ErrorRate: 1}); err != nil { // 503, nothing refunded
		t.Fatal(err)
	}
	resp, r, err := f.refund(context.Background(), p.ID, "r", 300)
	if err != nil || resp.Status != http.StatusAccepted {
		t.Fatalf("a 503: %d (%v); want 202, the outcome unknown", resp.Status, err)
	}
	f.fake.ResetFaults()
	waitForDB(t, f.pool, "the refund to be stale", `SELECT now() - attempted_at > interval '2 milliseconds' FROM idempotency_keys WHERE resource_id = $1`, r.ID)
	if settled, err := newReconciler(t, f, time.Millisecond).RunOnce(context.Background()); err != nil || settled != 1 {
		t.Fatalf("RunOnce = %d, %v; want the refund failed", settled, err)
	}
	list, _ := f.svc.Refunds(context.Background(), "client_a", p.ID)
	if len(list) != 1 || list[0].Status != payments.StatusFailed || list[0].FailureCode != payments.FailureNoRefund {
		t.Fatalf("refunds %+v, want one failed with %s", list, payments.FailureNoRefund)
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 0 || pending != 0 {
		t.Errorf("refunded %d, pending %d; want the reservation freed", refunded, pending)
	}
}

func TestRefund_UnsentRefundFreesItsKeyAndAmount(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close()
	up := f.svc.Provider
	client, err := provider.NewClient(provider.Config{BaseURL: down, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.Provider = client
	if _, _, err := f.refund(context.Background(), p.ID, "r", 300); !errors.Is(err, payments.ErrUnavailable) {
		t.Fatalf("a refund the provider never got: %v, want ErrUnavailable", err)
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 0 || pending != 0 {
		t.Fatalf("refunded %d, pending %d; want nothing held", refunded, pending)
	}
	f.svc.Provider = up
	if resp, _, err := f.refund(context.Background(), p.ID, "r", 300); err != nil || resp.Status != http.StatusCreated || resp.Replayed {
		t.Fatalf("the key once the provider is back: %d (%v), want a fresh 201", resp.Status, err)
	}
}

func TestRefund_AProviderRefusalFailsTheRefundAndFreesTheAmount(t *testing.T) {
	f := newFixture(t, "", 2*time.Second)
	p := paid(t, f, "pay", 1000)
	// Someone refunded 900 at the provider directly: it has 100 left,
	// which the service does not know.
	charge := f.fake.ChargesByKey(p.ID)[0]
	client, err := provider.NewClient(provider.Config{BaseURL: f.url, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rf, err := client.Refund(context.Background(), provider.RefundRequest{IdempotencyKey: "outside", Charge: charge.ID, Amount: 900, Reference: "outside"}); err != nil || rf.Status != provider.RefundSucceeded {
		t.Fatalf("outside refund: %+v, %v", rf, err)
	}
	resp, r, err := f.refund(context.Background(), p.ID, "r", 500)
	if err != nil || resp.Status != http.StatusUnprocessableEntity || r.Status != payments.StatusFailed || r.FailureCode != "amount_too_large" {
		t.Fatalf("a refund the provider refuses: %d %s (%v); want 422 with the refund failed", resp.Status, resp.Body, err)
	}
	if refunded, pending := amounts(t, f, p.ID); refunded != 0 || pending != 0 {
		t.Errorf("refunded %d, pending %d; want the reservation freed", refunded, pending)
	}
	again, _, err := f.refund(context.Background(), p.ID, "r", 500)
	if err != nil || !again.Replayed || again.Status != http.StatusUnprocessableEntity {
		t.Errorf("the retry: %d replayed=%v (%v); want the stored refusal", again.Status, again.Replayed, err)
	}
}
