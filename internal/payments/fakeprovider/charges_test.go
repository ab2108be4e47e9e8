package fakeprovider_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

func TestCreateCharge_RejectsInvalidRequestsWithoutCharging(t *testing.T) {
	const valid = `{"amount":1000,"currency":"usd","reference":"pay_1"}`
	tests := []struct {
		name       string
		key        string
		body       string
		wantStatus int
		wantCode   string
		wantInMsg  string
	}{
		{"missing Idempotency-Key", "", valid, http.StatusBadRequest, "invalid_request", "Idempotency-Key"},
		{"empty body", "k", "", http.StatusBadRequest, "invalid_request", "empty"},
		{"malformed JSON", "k", `{"amount":`, http.StatusBadRequest, "invalid_request", "decode"},
		{"not an object", "k", `[1000]`, http.StatusBadRequest, "invalid_request", "decode"},
		{"unknown field", "k", `{"amount":1000,"currency":"usd","tip":5}`, http.StatusBadRequest, "invalid_request", "tip"},
		{"trailing data", "k", valid + `{}`, http.StatusBadRequest, "invalid_request", "after"},
		{"amount as a string", "k", `{"amount":"1000","currency":"usd"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"fractional amount", "k", `{"amount":10.5,"currency":"usd"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"missing amount", "k", `{"currency":"usd"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"zero amount", "k", `{"amount":0,"currency":"usd"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"negative amount", "k", `{"amount":-5,"currency":"usd"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"missing currency", "k", `{"amount":1000}`, http.StatusBadRequest, "invalid_request", "currency"},
		{"empty currency", "k", `{"amount":1000,"currency":""}`, http.StatusBadRequest, "invalid_request", "currency"},
		{"body too large", "k", `{"reference":"` + strings.Repeat("x", 64<<10) + `"}`, http.StatusRequestEntityTooLarge, "request_too_large", "larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)

			got := call(t, srv, http.MethodPost, "/v1/charges", tt.key, tt.body)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d; body %s", got.status, tt.wantStatus, got.body)
			}
			e := decode[errorBody](t, got)
			if e.Error != tt.wantCode {
				t.Errorf("error = %q, want %q", e.Error, tt.wantCode)
			}
			if !strings.Contains(e.Message, tt.wantInMsg) {
				t.Errorf("message = %q, want it to mention %q", e.Message, tt.wantInMsg)
			}
			if n := len(p.Charges()); n != 0 {
				t.Errorf("ledger has %d charges, want none", n)
			}
		})
	}
}

func TestCreateCharge_RejectsKeyReusedForADifferentCharge(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{"different amount", `{"amount":2000,"currency":"usd","reference":"pay_k"}`},
		{"different currency", `{"amount":1000,"currency":"eur","reference":"pay_k"}`},
		{"different reference", `{"amount":1000,"currency":"usd","reference":"pay_other"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			postCharge(t, srv, "k", 1000)
			before := p.Charges()

			got := call(t, srv, http.MethodPost, "/v1/charges", "k", tt.body)

			if got.status != http.StatusUnprocessableEntity {
				t.Errorf("status = %d, want 422", got.status)
			}
			if e := decode[errorBody](t, got); e.Error != "idempotency_key_reused" {
				t.Errorf("error = %q, want idempotency_key_reused", e.Error)
			}
			if after := p.Charges(); len(after) != 1 || after[0] != before[0] {
				t.Errorf("ledger = %+v, want it unchanged: %+v", after, before)
			}
		})
	}
}

func TestCreateCharge_SucceedsWithTheRecordedCharge(t *testing.T) {
	p, srv := start(t)
	before := time.Now()

	got := call(t, srv, http.MethodPost, "/v1/charges", "key-1", `{"amount":1000,"currency":"usd","reference":"pay_123"}`)

	if got.status != http.StatusCreated {
		t.Fatalf("status = %d, want 201; body %s", got.status, got.body)
	}
	ch := decode[fakeprovider.Charge](t, got)
	if !regexp.MustCompile(`^ch_[0-9a-f]{24}$`).MatchString(ch.ID) {
		t.Errorf("id = %q, want ch_ and 24 hex digits", ch.ID)
	}
	want := fakeprovider.Charge{
		ID: ch.ID, Status: "succeeded", Amount: 1000, Currency: "usd", Reference: "pay_123",
		IdempotencyKey: "key-1", CreatedAt: ch.CreatedAt,
	}
	if ch != want {
		t.Errorf("charge = %+v, want %+v", ch, want)
	}
	if ch.CreatedAt.Before(before.Add(-time.Second)) || ch.CreatedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("created_at = %v, want about now", ch.CreatedAt)
	}
	if bytes.Contains(got.body, []byte(`"code"`)) {
		t.Errorf("body %s has a code; only declines do", got.body)
	}
	if ledger := p.Charges(); len(ledger) != 1 || !ledger[0].CreatedAt.Equal(ch.CreatedAt) || ledger[0].ID != ch.ID {
		t.Errorf("ledger = %+v, want just the answered charge", ledger)
	}
}

func TestCreateCharge_DeclinesAmountsEndingIn402(t *testing.T) {
	tests := []struct {
		amount     int64
		wantStatus int
		wantState  string
		wantCode   string
	}{
		{402, http.StatusPaymentRequired, "declined", "card_declined"},
		{1402, http.StatusPaymentRequired, "declined", "card_declined"},
		{99402, http.StatusPaymentRequired, "declined", "card_declined"},
		{4020, http.StatusCreated, "succeeded", ""},
		{1403, http.StatusCreated, "succeeded", ""},
		{401, http.StatusCreated, "succeeded", ""},
		{42, http.StatusCreated, "succeeded", ""},
		{502, http.StatusCreated, "succeeded", ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.amount), func(t *testing.T) {
			p, srv := start(t)

			got := postCharge(t, srv, "k", tt.amount)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d", got.status, tt.wantStatus)
			}
			ch := decode[fakeprovider.Charge](t, got)
			if ch.Status != tt.wantState || ch.Code != tt.wantCode || ch.Amount != tt.amount {
				t.Errorf("charge = %+v, want status %q, code %q, amount %d", ch, tt.wantState, tt.wantCode, tt.amount)
			}
			if ledger := p.Charges(); len(ledger) != 1 || ledger[0].Status != tt.wantState {
				t.Errorf("ledger = %+v, want one %s charge", ledger, tt.wantState)
			}
		})
	}
}

func TestCreateCharge_ReplaysTheRecordedChargeForTheSameKey(t *testing.T) {
	tests := []struct {
		name       string
		amount     int64
		wantStatus int
	}{
		{"succeeded", 1000, http.StatusCreated},
		{"declined", 1402, http.StatusPaymentRequired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			first := postCharge(t, srv, "k", tt.amount)

			replay := postCharge(t, srv, "k", tt.amount)

			if first.status != tt.wantStatus || replay.status != tt.wantStatus {
				t.Errorf("statuses = %d then %d, want %d both times", first.status, replay.status, tt.wantStatus)
			}
			if !bytes.Equal(replay.body, first.body) {
				t.Errorf("replay body = %s, want the first answer's %s", replay.body, first.body)
			}
			if n := len(p.Charges()); n != 1 {
				t.Errorf("ledger has %d charges, want 1", n)
			}
		})
	}
}

func TestCreateCharge_ConcurrentRequestsWithOneKeyChargeOnce(t *testing.T) {
	const requests = 100
	p, srv := start(t)
	answers := make([]exchange, requests)

	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() { answers[i] = postCharge(t, srv, "same-key", 1000) })
	}
	wg.Wait()

	ledger := p.Charges()
	if len(ledger) != 1 {
		t.Fatalf("ledger has %d charges, want exactly 1", len(ledger))
	}
	for i, a := range answers {
		if a.status != http.StatusCreated {
			t.Errorf("answer %d: status = %d, want 201", i, a.status)
			continue
		}
		if ch := decode[fakeprovider.Charge](t, a); ch.ID != ledger[0].ID {
			t.Errorf("answer %d: charge %s, want the one charge %s", i, ch.ID, ledger[0].ID)
		}
	}
}

func TestListCharges_FindsTheChargeForAnIdempotencyKey(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		wantIDs []string
	}{
		{"found", "k2", []string{"ch_2"}},
		{"not found", "k9", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs())
			postCharge(t, srv, "k1", 1000)
			postCharge(t, srv, "k2", 1402)
			postCharge(t, srv, "k3", 3000)

			got := call(t, srv, http.MethodGet, "/v1/charges?idempotency_key="+tt.key, "", "")

			if got.status != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %s", got.status, got.body)
			}
			// Decode into raw messages so that null and [] stay distinguishable.
			list := decode[map[string]json.RawMessage](t, got)
			if string(list["data"]) == "null" {
				t.Errorf("data is null, want an array")
			}
			var data []fakeprovider.Charge
			mustUnmarshal(t, list["data"], &data)
			if gotIDs := ids(data); !slices.Equal(gotIDs, tt.wantIDs) {
				t.Errorf("data IDs = %v, want %v", gotIDs, tt.wantIDs)
			}
			if want := p.ChargesByKey(tt.key); !slices.Equal(ids(want), tt.wantIDs) {
				t.Errorf("ChargesByKey = %v, want %v", ids(want), tt.wantIDs)
			}
		})
	}
}

func TestListCharges_RejectsAnEmptyIdempotencyKey(t *testing.T) {
	_, srv := start(t)

	got := call(t, srv, http.MethodGet, "/v1/charges?idempotency_key=", "", "")

	if got.status != http.StatusBadRequest {
		t.Errorf("status = %d, want 400", got.status)
	}
	if e := decode[errorBody](t, got); !strings.Contains(e.Message, "idempotency_key") {
		t.Errorf("message = %q, want it to name idempotency_key", e.Message)
	}
}

func TestListCharges_ListsTheWholeLedgerOldestFirst(t *testing.T) {
	tests := []struct {
		name    string
		keys    []string
		wantIDs []string
	}{
		{"empty", nil, []string{}},
		{"three charges", []string{"k1", "k2", "k3"}, []string{"ch_1", "ch_2", "ch_3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := start(t, sequentialIDs())
			for _, k := range tt.keys {
				postCharge(t, srv, k, 1000)
			}

			got := call(t, srv, http.MethodGet, "/v1/charges", "", "")

			if got.status != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %s", got.status, got.body)
			}
			list := decode[map[string]json.RawMessage](t, got)
			if string(list["data"]) == "null" {
				t.Errorf("data is null, want an array")
			}
			var data []fakeprovider.Charge
			var count int
			mustUnmarshal(t, list["data"], &data)
			mustUnmarshal(t, list["count"], &count)
			if gotIDs := ids(data); !slices.Equal(gotIDs, tt.wantIDs) {
				t.Errorf("data IDs = %v, want %v", gotIDs, tt.wantIDs)
			}
			if count != len(tt.wantIDs) {
				t.Errorf("count = %d, want %d", count, len(tt.wantIDs))
			}
		})
	}
}
