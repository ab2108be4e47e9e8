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

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

func TestCreateRefund_RejectsInvalidRequestsWithoutRefundingOrTakingTheKey(t *testing.T) {
	const valid = `{"charge":"ch_1","amount":500,"reference":"re_1"}`
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
		{"malformed JSON", "k", `{"charge":`, http.StatusBadRequest, "invalid_request", "decode"},
		{"not an object", "k", `["ch_1",500]`, http.StatusBadRequest, "invalid_request", "decode"},
		{"unknown field", "k", `{"charge":"ch_1","amount":500,"currency":"usd"}`, http.StatusBadRequest, "invalid_request", "currency"},
		{"trailing data", "k", valid + `{}`, http.StatusBadRequest, "invalid_request", "after"},
		{"amount as a string", "k", `{"charge":"ch_1","amount":"500"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"fractional amount", "k", `{"charge":"ch_1","amount":5.5}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"missing amount", "k", `{"charge":"ch_1"}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"zero amount", "k", `{"charge":"ch_1","amount":0}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"negative amount", "k", `{"charge":"ch_1","amount":-5}`, http.StatusBadRequest, "invalid_request", "amount"},
		{"missing charge", "k", `{"amount":500}`, http.StatusBadRequest, "invalid_request", "charge"},
		{"empty charge", "k", `{"charge":"","amount":500}`, http.StatusBadRequest, "invalid_request", "charge"},
		{"charge as a number", "k", `{"charge":1,"amount":500}`, http.StatusBadRequest, "invalid_request", "charge"},
		{"body too large", "k", `{"reference":"` + strings.Repeat("x", 64<<10) + `"}`, http.StatusRequestEntityTooLarge, "request_too_large", "larger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs())
			charged(t, srv, "charge-1", 1000)

			got := call(t, srv, http.MethodPost, "/v1/refunds", tt.key, tt.body)

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
			if n := len(p.Refunds()); n != 0 {
				t.Errorf("ledger has %d refunds, want none", n)
			}
			// A request refused before it was decided leaves its key free.
			if again := postRefund(t, srv, "k", "ch_1", 500); again.status != http.StatusCreated {
				t.Errorf("a valid refund with the key afterwards = %d %s, want 201", again.status, again.body)
			}
		})
	}
}

func TestCreateRefund_SucceedsWithTheRecordedRefund(t *testing.T) {
	p, srv := start(t)
	ch := charged(t, srv, "charge-1", 1000)

	got := call(t, srv, http.MethodPost, "/v1/refunds", "refund-1",
		fmt.Sprintf(`{"charge":%q,"amount":400,"reference":"re_123"}`, ch))

	if got.status != http.StatusCreated {
		t.Fatalf("status = %d, want 201; body %s", got.status, got.body)
	}
	rf := decode[fakeprovider.Refund](t, got)
	if !regexp.MustCompile(`^rf_[0-9a-f]{24}$`).MatchString(rf.ID) {
		t.Errorf("id = %q, want rf_ and 24 hex digits", rf.ID)
	}
	want := fakeprovider.Refund{
		ID: rf.ID, Status: fakeprovider.StatusSucceeded, Charge: ch, Amount: 400, Reference: "re_123",
		IdempotencyKey: "refund-1",
	}
	if rf != want {
		t.Errorf("refund = %+v, want %+v", rf, want)
	}
	if ledger := p.Refunds(); !slices.Equal(ledger, []fakeprovider.Refund{want}) {
		t.Errorf("ledger = %+v, want just the answered refund", ledger)
	}
	if byKey := p.RefundsByKey("refund-1"); !slices.Equal(byKey, []fakeprovider.Refund{want}) {
		t.Errorf("RefundsByKey = %+v, want just the answered refund", byKey)
	}
}

func TestCreateRefund_RefundsAtMostWhatIsLeftOfTheCharge(t *testing.T) {
	tests := []struct {
		name       string
		earlier    []int64 // refunds of the same charge, made first
		ofOther    []int64 // refunds of another charge of 1000, made first
		amount     int64
		wantStatus int
		wantCode   string
	}{
		{"the whole charge", nil, nil, 1000, http.StatusCreated, ""},
		{"more than the charge", nil, nil, 1001, http.StatusUnprocessableEntity, "amount_too_large"},
		{"a second partial within what is left", []int64{400}, nil, 600, http.StatusCreated, ""},
		{"a second partial beyond what is left", []int64{600}, nil, 401, http.StatusUnprocessableEntity, "amount_too_large"},
		{"anything after a full refund", []int64{1000}, nil, 1, http.StatusUnprocessableEntity, "amount_too_large"},
		{"refunds of another charge do not count", nil, []int64{1000}, 1000, http.StatusCreated, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			ch := charged(t, srv, "charge-1", 1000)
			other := charged(t, srv, "charge-2", 1000)
			var refunded int64
			for i, amount := range tt.earlier {
				if got := postRefund(t, srv, fmt.Sprintf("earlier-%d", i), ch, amount); got.status != http.StatusCreated {
					t.Fatalf("earlier refund of %d = %d %s, want 201", amount, got.status, got.body)
				}
				refunded += amount
			}
			for i, amount := range tt.ofOther {
				if got := postRefund(t, srv, fmt.Sprintf("other-%d", i), other, amount); got.status != http.StatusCreated {
					t.Fatalf("refund of %d of the other charge = %d %s, want 201", amount, got.status, got.body)
				}
			}

			got := postRefund(t, srv, "k", ch, tt.amount)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d; body %s", got.status, tt.wantStatus, got.body)
			}
			if tt.wantCode != "" {
				if e := decode[errorBody](t, got); e.Error != tt.wantCode || !strings.Contains(e.Message, ch) {
					t.Errorf("error = %+v, want %s naming charge %s", e, tt.wantCode, ch)
				}
			} else {
				refunded += tt.amount
			}
			var sum int64
			for _, rf := range p.Refunds() {
				if rf.Charge == ch {
					sum += rf.Amount
				}
			}
			if sum != refunded {
				t.Errorf("ledger refunds %d of the charge, want %d", sum, refunded)
			}
		})
	}
}

func TestCreateRefund_RefusesChargesItCannotRefund(t *testing.T) {
	tests := []struct {
		name       string
		charge     string
		wantStatus int
		wantCode   string
	}{
		{"unknown charge", "ch_9", http.StatusNotFound, "no_such_charge"},
		{"declined charge", "ch_2", http.StatusUnprocessableEntity, "charge_not_refundable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs())
			charged(t, srv, "charge-1", 1000) // ch_1
			charged(t, srv, "charge-2", 1402) // ch_2, declined

			got := postRefund(t, srv, "k", tt.charge, 100)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d; body %s", got.status, tt.wantStatus, got.body)
			}
			if e := decode[errorBody](t, got); e.Error != tt.wantCode || !strings.Contains(e.Message, tt.charge) {
				t.Errorf("error = %+v, want %s naming charge %s", e, tt.wantCode, tt.charge)
			}
			if n := len(p.Refunds()); n != 0 {
				t.Errorf("ledger has %d refunds, want none", n)
			}
		})
	}
}

func TestCreateRefund_ReplaysTheRecordedOutcomeForTheSameKey(t *testing.T) {
	tests := []struct {
		name       string
		charge     string
		amount     int64 // 600 of 1000: refunding it twice would be refused
		wantStatus int
	}{
		{"refunded", "ch_1", 600, http.StatusCreated},
		{"refused: more than the charge", "ch_1", 1001, http.StatusUnprocessableEntity},
		{"refused: unknown charge", "ch_9", 600, http.StatusNotFound},
		{"refused: declined charge", "ch_2", 600, http.StatusUnprocessableEntity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs())
			charged(t, srv, "charge-1", 1000) // ch_1
			charged(t, srv, "charge-2", 1402) // ch_2, declined
			first := postRefund(t, srv, "k", tt.charge, tt.amount)
			before := p.Refunds()

			replay := postRefund(t, srv, "k", tt.charge, tt.amount)

			if first.status != tt.wantStatus || replay.status != tt.wantStatus {
				t.Errorf("statuses = %d then %d, want %d both times", first.status, replay.status, tt.wantStatus)
			}
			if !bytes.Equal(replay.body, first.body) {
				t.Errorf("replay body = %s, want the first answer's %s", replay.body, first.body)
			}
			if after := p.Refunds(); !slices.Equal(after, before) {
				t.Errorf("ledger = %+v after the replay, want it unchanged: %+v", after, before)
			}
		})
	}
}

func TestCreateRefund_ReplaysARefusalEvenOnceTheRefundWouldSucceed(t *testing.T) {
	p, srv := start(t, sequentialIDs())
	first := postRefund(t, srv, "k", "ch_1", 500) // before ch_1 exists
	charged(t, srv, "charge-1", 1000)             // ch_1

	replay := postRefund(t, srv, "k", "ch_1", 500)

	if first.status != http.StatusNotFound || replay.status != http.StatusNotFound {
		t.Errorf("statuses = %d then %d, want 404 both times: the key's outcome is the refusal", first.status, replay.status)
	}
	if !bytes.Equal(replay.body, first.body) {
		t.Errorf("replay body = %s, want the first answer's %s", replay.body, first.body)
	}
	if n := len(p.Refunds()); n != 0 {
		t.Errorf("ledger has %d refunds, want none", n)
	}
	if fresh := postRefund(t, srv, "k2", "ch_1", 500); fresh.status != http.StatusCreated {
		t.Errorf("a new key = %d %s, want 201", fresh.status, fresh.body)
	}
}

func TestCreateRefund_RejectsKeyReusedForADifferentRefund(t *testing.T) {
	tests := []struct {
		name        string
		firstAmount int64
		body        string
	}{
		{"different charge", 600, `{"charge":"ch_2","amount":600,"reference":"re_k"}`},
		{"different amount", 600, `{"charge":"ch_1","amount":500,"reference":"re_k"}`},
		{"different reference", 600, `{"charge":"ch_1","amount":600,"reference":"re_other"}`},
		{"after a refusal, an amount that fits", 2000, `{"charge":"ch_1","amount":500,"reference":"re_k"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs())
			charged(t, srv, "charge-1", 1000) // ch_1
			charged(t, srv, "charge-2", 1000) // ch_2
			postRefund(t, srv, "k", "ch_1", tt.firstAmount)
			before := p.Refunds()

			got := call(t, srv, http.MethodPost, "/v1/refunds", "k", tt.body)

			if got.status != http.StatusUnprocessableEntity {
				t.Errorf("status = %d, want 422", got.status)
			}
			if e := decode[errorBody](t, got); e.Error != "idempotency_key_reused" {
				t.Errorf("error = %q, want idempotency_key_reused", e.Error)
			}
			if after := p.Refunds(); !slices.Equal(after, before) {
				t.Errorf("ledger = %+v, want it unchanged: %+v", after, before)
			}
		})
	}
}

func TestCreateRefund_ConcurrentRequestsWithOneKeyRefundOnce(t *testing.T) {
	const requests = 100
	p, srv := start(t)
	ch := charged(t, srv, "charge-1", 1000)
	answers := make([]exchange, requests)

	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() { answers[i] = postRefund(t, srv, "same-key", ch, 600) })
	}
	wg.Wait()

	ledger := p.Refunds()
	if len(ledger) != 1 {
		t.Fatalf("ledger has %d refunds, want exactly 1", len(ledger))
	}
	for i, a := range answers {
		if a.status != http.StatusCreated {
			t.Errorf("answer %d: status = %d, want 201", i, a.status)
			continue
		}
		if rf := decode[fakeprovider.Refund](t, a); rf.ID != ledger[0].ID {
			t.Errorf("answer %d: refund %s, want the one refund %s", i, rf.ID, ledger[0].ID)
		}
	}
}

func TestCreateRefund_ConcurrentRefundsOfOneChargeNeverExceedIt(t *testing.T) {
	// 50 refunds of 40 ask for 2000 of a 1000 charge: exactly 25 fit,
	// whatever order they are decided in.
	const requests, amount, charge = 50, 40, 1000
	p, srv := start(t)
	ch := charged(t, srv, "charge-1", charge)
	answers := make([]exchange, requests)

	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() { answers[i] = postRefund(t, srv, fmt.Sprintf("refund-%d", i), ch, amount) })
	}
	wg.Wait()

	ledger := p.Refunds()
	var sum int64
	seen := make(map[string]bool)
	for _, rf := range ledger {
		sum += rf.Amount
		if seen[rf.ID] {
			t.Errorf("refund ID %s given twice", rf.ID)
		}
		seen[rf.ID] = true
	}
	if sum != charge || len(ledger) != charge/amount {
		t.Errorf("ledger has %d refunds summing to %d, want %d summing to exactly %d", len(ledger), sum, charge/amount, charge)
	}
	var answered []string
	for i, a := range answers {
		switch a.status {
		case http.StatusCreated:
			answered = append(answered, decode[fakeprovider.Refund](t, a).ID)
		case http.StatusUnprocessableEntity:
			if e := decode[errorBody](t, a); e.Error != "amount_too_large" {
				t.Errorf("answer %d: error = %q, want amount_too_large", i, e.Error)
			}
		default:
			t.Errorf("answer %d: status = %d, want 201 or 422", i, a.status)
		}
	}
	slices.Sort(answered)
	if inLedger := slices.Sorted(slices.Values(refundIDs(ledger))); !slices.Equal(answered, inLedger) {
		t.Errorf("refunds answered 201 = %v, want exactly the ledger's %v", answered, inLedger)
	}
}

func TestListRefunds_FindsTheRefundForAnIdempotencyKey(t *testing.T) {
	tests := []struct {
		name    string
		key     string
		wantIDs []string
	}{
		{"found", "k2", []string{"rf_2"}},
		{"refused", "k3", []string{}},
		{"not found", "k9", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs(), sequentialRefundIDs())
			charged(t, srv, "charge-1", 1000)
			postRefund(t, srv, "k1", "ch_1", 300)
			postRefund(t, srv, "k2", "ch_1", 300)
			postRefund(t, srv, "k3", "ch_1", 2000)

			got := call(t, srv, http.MethodGet, "/v1/refunds?idempotency_key="+tt.key, "", "")

			if got.status != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %s", got.status, got.body)
			}
			// Decode into raw messages so that null and [] stay distinguishable.
			list := decode[map[string]json.RawMessage](t, got)
			if string(list["data"]) == "null" {
				t.Errorf("data is null, want an array")
			}
			var data []fakeprovider.Refund
			mustUnmarshal(t, list["data"], &data)
			if gotIDs := refundIDs(data); !slices.Equal(gotIDs, tt.wantIDs) {
				t.Errorf("data IDs = %v, want %v", gotIDs, tt.wantIDs)
			}
			if byKey := p.RefundsByKey(tt.key); !slices.Equal(byKey, data) {
				t.Errorf("RefundsByKey = %+v, want what the endpoint answered: %+v", byKey, data)
			}
		})
	}
}

func TestListRefunds_RejectsAnEmptyIdempotencyKey(t *testing.T) {
	_, srv := start(t)

	got := call(t, srv, http.MethodGet, "/v1/refunds?idempotency_key=", "", "")

	if got.status != http.StatusBadRequest {
		t.Errorf("status = %d, want 400", got.status)
	}
	if e := decode[errorBody](t, got); !strings.Contains(e.Message, "idempotency_key") {
		t.Errorf("message = %q, want it to name idempotency_key", e.Message)
	}
}

func TestListRefunds_ListsTheWholeLedgerOldestFirst(t *testing.T) {
	type refund struct {
		key, charge string
		amount      int64
	}
	tests := []struct {
		name    string
		refunds []refund
		wantIDs []string
	}{
		{"empty", nil, []string{}},
		{"refunds of two charges, and a refusal", []refund{
			{"k1", "ch_1", 100}, {"k2", "ch_2", 200}, {"k3", "ch_1", 5000}, {"k4", "ch_1", 300},
		}, []string{"rf_1", "rf_2", "rf_3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t, sequentialIDs(), sequentialRefundIDs())
			charged(t, srv, "charge-1", 1000)
			charged(t, srv, "charge-2", 1000)
			for _, r := range tt.refunds {
				postRefund(t, srv, r.key, r.charge, r.amount)
			}

			got := call(t, srv, http.MethodGet, "/v1/refunds", "", "")

			if got.status != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %s", got.status, got.body)
			}
			list := decode[map[string]json.RawMessage](t, got)
			if string(list["data"]) == "null" {
				t.Errorf("data is null, want an array")
			}
			var data []fakeprovider.Refund
			var count int
			mustUnmarshal(t, list["data"], &data)
			mustUnmarshal(t, list["count"], &count)
			if gotIDs := refundIDs(data); !slices.Equal(gotIDs, tt.wantIDs) {
				t.Errorf("data IDs = %v, want %v", gotIDs, tt.wantIDs)
			}
			if count != len(tt.wantIDs) {
				t.Errorf("count = %d, want %d", count, len(tt.wantIDs))
			}
			if ledger := p.Refunds(); !slices.Equal(ledger, data) {
				t.Errorf("Refunds() = %+v, want what the endpoint answered: %+v", ledger, data)
			}
		})
	}
}
