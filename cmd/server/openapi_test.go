package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/resiliencekit/payservice/api"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
	"github.com/resiliencekit/payservice/internal/platform/web/openapitest"
)

// spec is the API description every exchange with the public port is
// checked against (call, apiClient). One per test binary, so that it sees
// every operation the tests exercise: TestOpenAPI_EveryOperationIsExercised.
var spec = openapitest.MustLoad(api.Spec)

func TestMain(m *testing.M) { openapitest.Main(m, testenv.Main) }

// TestOpenAPI_EveryOperationIsExercised runs once every other test of the
// package has (openapitest.CheckExercisedLast says how).
func TestOpenAPI_EveryOperationIsExercised(t *testing.T) { spec.CheckExercisedLast(t) }

// TestRun_AnswersAsItsOpenAPIDescriptionSays takes the running server
// through every operation of its description, each exchange checked
// against it: the server's real answers (timestamps, ids, headers, the
// stored replays) are what the description must describe.
func TestRun_AnswersAsItsOpenAPIDescriptionSays(t *testing.T) {
	st := newStack(t, nil)
	srv := st.start(t)

	r := call(t, http.MethodGet, srv.api+"/openapi.yaml", "", "", "")
	if r.status != 200 || !bytes.Equal(r.body, api.Spec) || r.header.Get("Content-Type") != "application/yaml" {
		t.Errorf("GET /openapi.yaml: %d %q, %d bytes; want 200 application/yaml with the %d embedded",
			r.status, r.header.Get("Content-Type"), len(r.body), len(api.Spec))
	}
	if r := call(t, http.MethodGet, srv.api+"/health/live", "", "", ""); r.status != 200 {
		t.Errorf("live: %d", r.status)
	}

	// A payment, a refund of part of it, and the reads that show them.
	paid := pay(t, srv, "key_a", "tour", body1000)
	p := decodePayment(t, paid)
	if paid.status != 201 || paid.header.Get("Location") != "/v1/payments/"+p.ID {
		t.Fatalf("payment: %d %v %s", paid.status, paid.header, paid.body)
	}
	refundURL := srv.api + "/v1/payments/" + p.ID + "/refunds"
	if r := call(t, http.MethodPost, refundURL, "key_a", "tour-refund", `{"amount":400,"reason":"requested_by_customer"}`); r.status != 201 {
		t.Fatalf("refund: %d %s", r.status, r.body)
	}
	if r := call(t, http.MethodPost, refundURL, "key_a", "tour-refund", `{"amount":400,"reason":"requested_by_customer"}`); r.status != 201 || r.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("refund replay: %d %v", r.status, r.header)
	}
	var refunds struct {
		Data []struct{ Amount int64 } `json:"data"`
	}
	if r := call(t, http.MethodGet, refundURL, "key_a", "", ""); r.status != 200 || json.Unmarshal(r.body, &refunds) != nil || len(refunds.Data) != 1 {
		t.Errorf("refunds: %d %s, want the one refund", r.status, r.body)
	}
	var got struct {
		AmountRefunded int64 `json:"amount_refunded"`
	}
	if r := call(t, http.MethodGet, srv.api+"/v1/payments/"+p.ID, "key_a", "", ""); r.status != 200 || json.Unmarshal(r.body, &got) != nil || got.AmountRefunded != 400 {
		t.Errorf("payment after its refund: %d %s, want amount_refunded 400", r.status, r.body)
	}
	var page struct {
		Data    []paymentBody `json:"data"`
		HasMore bool          `json:"has_more"`
	}
	if r := call(t, http.MethodGet, srv.api+"/v1/payments?limit=1", "key_a", "", ""); r.status != 200 || json.Unmarshal(r.body, &page) != nil || len(page.Data) != 1 || page.Data[0].ID != p.ID {
		t.Errorf("list: %d %s, want the payment", r.status, r.body)
	}

	// What the server refuses, as it refuses it.
	declined := pay(t, srv, "key_a", "tour-declined", `{"amount":1402,"currency":"usd"}`)
	if declined.status != 402 {
		t.Errorf("a declined payment: %d %s, want 402", declined.status, declined.body)
	}
	for _, tt := range []struct {
		name, method, url, key, idemKey, body string
		want                                  int
		wantType                              string
	}{
		{"more than is left to refund", http.MethodPost, refundURL, "key_a", "tour-refund-2", `{"amount":700}`, 422, "/refund-too-large"},
		{"a refund of a declined payment", http.MethodPost, srv.api + "/v1/payments/" + decodePayment(t, declined).ID + "/refunds", "key_a", "tour-refund-3", `{"amount":1}`, 409, "/payment-not-refundable"},
		{"another client's refunds", http.MethodGet, refundURL, "key_b", "", "", 404, "/not-found"},
		{"a bad cursor", http.MethodGet, srv.api + "/v1/payments?starting_after=pay_none", "key_a", "", "", 400, "/invalid-query"},
		{"no key", http.MethodGet, srv.api + "/v1/payments", "", "", "", 401, "/unauthorized"},
		{"no such route", http.MethodGet, srv.api + "/v2/payments", "", "", "", 404, "/not-found"},
		{"no such method", http.MethodDelete, srv.api + "/v1/payments/" + p.ID, "key_a", "", "", 405, "/method-not-allowed"},
	} {
		r := call(t, tt.method, tt.url, tt.key, tt.idemKey, tt.body)
		var prob struct{ Type string }
		if err := json.Unmarshal(r.body, &prob); err != nil || r.status != tt.want || !strings.HasSuffix(prob.Type, tt.wantType) {
			t.Errorf("%s: %d %s, want %d %s", tt.name, r.status, r.body, tt.want, tt.wantType)
		}
	}
}
