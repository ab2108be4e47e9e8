package fakeprovider_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// A request that reaches its turn after its expires_at does nothing: no
// charge, no refund, nothing recorded for its key, so a later request with
// the key (and a fresh expiry) is still carried out. A replay of what was
// done in time answers it, whatever its own expiry.
func TestExpiry_ARequestPastItsExpiryDoesNothing(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	past, future := now.Add(-time.Millisecond).Format(time.RFC3339Nano), now.Add(time.Second).Format(time.RFC3339Nano)

	p, srv := start(t, fakeprovider.WithClock(clock))
	chargeWith := func(key, expires string) exchange {
		return call(t, srv, http.MethodPost, "/v1/charges", key,
			fmt.Sprintf(`{"amount":1000,"currency":"usd","reference":"pay_%s","expires_at":%q}`, key, expires))
	}
	refundWith := func(key, charge, expires string) exchange {
		return call(t, srv, http.MethodPost, "/v1/refunds", key,
			fmt.Sprintf(`{"charge":%q,"amount":100,"reference":"re_%s","expires_at":%q}`, charge, key, expires))
	}
	expired := func(what string, got exchange) {
		t.Helper()
		if got.status != http.StatusConflict || decode[struct{ Error string }](t, got).Error != fakeprovider.CodeExpired {
			t.Errorf("%s past its expiry: %d %s; want 409 %s", what, got.status, got.body, fakeprovider.CodeExpired)
		}
	}

	expired("a charge", chargeWith("k", past))
	if n := len(p.Charges()); n != 0 {
		t.Fatalf("an expired charge request charged: %d charges", n)
	}
	made := chargeWith("k", future)
	if made.status != http.StatusCreated {
		t.Fatalf("the key's next request, in time: %d %s; want 201", made.status, made.body)
	}
	ch := decode[fakeprovider.Charge](t, made)
	if replay := chargeWith("k", past); replay.status != http.StatusCreated || decode[fakeprovider.Charge](t, replay).ID != ch.ID {
		t.Errorf("a replay with an expired expiry: %d %s; want the charge made in time", replay.status, replay.body)
	}

	expired("a refund", refundWith("r", ch.ID, past))
	if n := len(p.Refunds()); n != 0 {
		t.Fatalf("an expired refund request refunded: %d refunds", n)
	}
	if got := refundWith("r", ch.ID, future); got.status != http.StatusCreated {
		t.Errorf("the refund key's next request, in time: %d %s; want 201", got.status, got.body)
	}
	if n := len(p.Refunds()); n != 1 {
		t.Errorf("%d refunds, want 1", n)
	}
}

// Without expires_at a request is carried out whenever it gets its turn,
// as before the field existed.
func TestExpiry_IsOptional(t *testing.T) {
	_, srv := start(t, fakeprovider.WithClock(func() time.Time { return time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC) }))
	if got := postCharge(t, srv, "k", 1000); got.status != http.StatusCreated {
		t.Errorf("a charge without expires_at: %d %s; want 201", got.status, got.body)
	}
}
