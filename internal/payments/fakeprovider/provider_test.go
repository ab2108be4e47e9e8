package fakeprovider_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// exchange is one request's answer, read in full.
type exchange struct {
	status int
	header http.Header
	body   []byte
}

// start serves a new provider over real HTTP, as other packages' tests do.
func start(t *testing.T, opts ...fakeprovider.Option) (*fakeprovider.Provider, *httptest.Server) {
	t.Helper()
	p := fakeprovider.New(opts...)
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

// call sends one request and reads the whole answer. An empty key sends no
// Idempotency-Key header.
func call(t *testing.T, srv *httptest.Server, method, path, key, body string) exchange {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("build %s %s: %v", method, path, err)
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return exchange{status: resp.StatusCode, header: resp.Header, body: b}
}

func postCharge(t *testing.T, srv *httptest.Server, key string, amount int64) exchange {
	t.Helper()
	body := fmt.Sprintf(`{"amount":%d,"currency":"usd","reference":"pay_%s"}`, amount, key)
	return call(t, srv, http.MethodPost, "/v1/charges", key, body)
}

// charged makes a charge and returns its ID, failing the test unless it
// was recorded (declined charges are).
func charged(t *testing.T, srv *httptest.Server, key string, amount int64) string {
	t.Helper()
	got := postCharge(t, srv, key, amount)
	if got.status != http.StatusCreated && got.status != http.StatusPaymentRequired {
		t.Fatalf("charge with key %q: status = %d, want 201 or 402; body %s", key, got.status, got.body)
	}
	return decode[fakeprovider.Charge](t, got).ID
}

func postRefund(t *testing.T, srv *httptest.Server, key, charge string, amount int64) exchange {
	t.Helper()
	body := fmt.Sprintf(`{"charge":%q,"amount":%d,"reference":"re_%s"}`, charge, amount, key)
	return call(t, srv, http.MethodPost, "/v1/refunds", key, body)
}

// decode decodes an answer's body, failing the test unless it is JSON and
// says so in its Content-Type.
func decode[T any](t *testing.T, x exchange) T {
	t.Helper()
	if ct := x.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var v T
	if err := json.Unmarshal(x.body, &v); err != nil {
		t.Fatalf("decode %s: %v", x.body, err)
	}
	return v
}

func mustUnmarshal(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}

func ids(charges []fakeprovider.Charge) []string {
	out := make([]string, 0, len(charges))
	for _, ch := range charges {
		out = append(out, ch.ID)
	}
	return out
}

func refundIDs(refunds []fakeprovider.Refund) []string {
	out := make([]string, 0, len(refunds))
	for _, rf := range refunds {
		out = append(out, rf.ID)
	}
	return out
}

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// sequentialIDs names charges ch_1, ch_2, … so tests can tell them apart by
// name. Like every ID generator, it runs under the provider's lock.
func sequentialIDs() fakeprovider.Option {
	n := 0
	return fakeprovider.WithChargeIDs(func() string {
		n++
		return fmt.Sprintf("ch_%d", n)
	})
}

// sequentialRefundIDs names refunds rf_1, rf_2, …, as sequentialIDs does
// charges.
func sequentialRefundIDs() fakeprovider.Option {
	n := 0
	return fakeprovider.WithRefundIDs(func() string {
		n++
		return fmt.Sprintf("rf_%d", n)
	})
}

func TestRoutes_AnswerUnknownRoutesAndMethodsInJSON(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		path       string
		wantStatus int
		wantCode   string
		wantAllow  string
	}{
		{"unknown path", http.MethodGet, "/v1/payouts", http.StatusNotFound, "not_found", ""},
		{"path below charges", http.MethodGet, "/v1/charges/ch_1", http.StatusNotFound, "not_found", ""},
		{"path below refunds", http.MethodGet, "/v1/refunds/rf_1", http.StatusNotFound, "not_found", ""},
		{"wrong method on charges", http.MethodDelete, "/v1/charges", http.StatusMethodNotAllowed, "method_not_allowed", "GET, HEAD, POST"},
		{"wrong method on refunds", http.MethodPut, "/v1/refunds", http.StatusMethodNotAllowed, "method_not_allowed", "GET, HEAD, POST"},
		{"wrong method on faults", http.MethodPost, "/_faults", http.StatusMethodNotAllowed, "method_not_allowed", "DELETE, GET, HEAD, PUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := start(t)

			got := call(t, srv, tt.method, tt.path, "", "")

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d", got.status, tt.wantStatus)
			}
			if e := decode[errorBody](t, got); e.Error != tt.wantCode {
				t.Errorf("error = %q, want %q", e.Error, tt.wantCode)
			}
			if allow := got.header.Get("Allow"); allow != tt.wantAllow {
				t.Errorf("Allow = %q, want %q", allow, tt.wantAllow)
			}
		})
	}
}

func TestNew_DefaultChargeIDsAreDistinct(t *testing.T) {
	p, srv := start(t)

	const n = 50
	for i := range n {
		postCharge(t, srv, fmt.Sprintf("key-%d", i), 1000)
	}

	// Distinct among fewer than n would prove nothing about the rest.
	charges := p.Charges()
	if len(charges) != n {
		t.Fatalf("ledger has %d charges after %d requests with distinct keys, want %d", len(charges), n, n)
	}
	seen := make(map[string]bool)
	for _, ch := range charges {
		if seen[ch.ID] {
			t.Fatalf("charge ID %s given twice", ch.ID)
		}
		seen[ch.ID] = true
	}
}

// Guard the one claim the lock exists for, against the race detector too.
func TestProvider_GoAPIIsSafeForConcurrentUse(t *testing.T) {
	p, srv := start(t)
	refundable := charged(t, srv, "charge-0", 1000)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() { postCharge(t, srv, fmt.Sprintf("key-%d", i), 1000) })
		wg.Go(func() { postRefund(t, srv, fmt.Sprintf("refund-%d", i), refundable, 100) })
		wg.Go(func() { _ = p.SetFaults(fakeprovider.Faults{LatencyMS: i}) })
		wg.Go(func() { p.Charges(); p.ChargesByKey("key-1"); p.Faults() })
		wg.Go(func() { p.Refunds(); p.RefundsByKey("refund-1") })
	}
	wg.Wait()

	if n := len(p.Charges()); n != 11 {
		t.Errorf("ledger has %d charges, want 11", n)
	}
	if n := len(p.Refunds()); n != 10 {
		t.Errorf("ledger has %d refunds, want 10", n)
	}
}
