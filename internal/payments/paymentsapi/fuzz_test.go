package paymentsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// A body is either refused as the client's error, with nothing reaching
// the service, or reaches it as a request within the documented limits,
// and that request, sent again, is the same request.

func FuzzCreatePayment_AcceptsOnlyRequestsWithinTheRulesAndRefusesTheRestAs4xx(f *testing.F) {
	for _, body := range []string{
		validBody,
		`{"amount":1,"currency":"usd","metadata":{}}`,
		`{"amount":99999999,"currency":"JPY","metadata":null}`,
		`{"amount":0,"currency":"xyz"}`,
		`{"amount":10.5,"currency":"usd"}`,
		`{"amount":5,"currency":"usd","AMOUNT":1000}`,
		`{"amount":1,"currency":"usd","metadata":{"a":"x","a":"y"}}`,
		`{"amount":1,"currency":"usd","metadata":{"a":null}}`,
		`{"amount":1,"currency":"\u212AES"}`,
		`{"amount":1,"currency":"usd","description":"a\u0000b"}`,
		`{"amount":1000,"currency":"usd"} {}`,
		`null`,
	} {
		f.Add([]byte(body))
	}
	metrics := fuzzMetrics(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		reached := func(b *bodies) *payments.CreateRequest { return b.create }
		req := postBody(t, metrics, "/v1/payments", body, reached)
		if req == nil {
			return
		}
		if rule := brokenPaymentRule(*req); rule != "" {
			t.Fatalf("accepted %q as %+v, which breaks the rule: %s", body, *req, rule)
		}
		sendAgain(t, metrics, "/v1/payments", req, reached)
	})
}

func FuzzRefund_AcceptsOnlyRequestsWithinTheRulesAndRefusesTheRestAs4xx(f *testing.F) {
	for _, body := range []string{
		`{"amount":500,"reason":"requested_by_customer"}`,
		`{"amount":1}`,
		`{"amount":0,"reason":"x"}`,
		`{"amount":100000000}`,
		`{"amount":1,"reason":"a\u0000b"}`,
		`{"amount":1,"Reason":"x"}`,
		`{"amount":1,"amount":2}`,
		`{"amount":"1"}`,
		`[1,2]`,
	} {
		f.Add([]byte(body))
	}
	metrics := fuzzMetrics(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		reached := func(b *bodies) *payments.RefundRequest { return b.refund }
		req := postBody(t, metrics, "/v1/payments/pay_1/refunds", body, reached)
		if req == nil {
			return
		}
		switch {
		case req.Amount < payments.MinAmount || req.Amount > payments.MaxAmount:
			t.Fatalf("accepted %q: amount %d outside [%d, %d]", body, req.Amount, payments.MinAmount, payments.MaxAmount)
		case !storableText(req.Reason, payments.MaxReason):
			t.Fatalf("accepted %q: reason %q is not storable text of at most %d characters", body, req.Reason, payments.MaxReason)
		}
		sendAgain(t, metrics, "/v1/payments/pay_1/refunds", req, reached)
	})
}

// brokenPaymentRule names the documented rule an accepted payment request
// breaks, or returns "". The currency is checked for its shape only: the
// ISO 4217 list is the code's own.
func brokenPaymentRule(r payments.CreateRequest) string {
	switch {
	case r.Amount < payments.MinAmount || r.Amount > payments.MaxAmount:
		return "amount in [1, 99999999]"
	case len(r.Currency) != 3 || strings.Trim(r.Currency, "abcdefghijklmnopqrstuvwxyz") != "":
		return "currency is three lower-case letters"
	case !storableText(r.Description, payments.MaxDescription):
		return "description is storable text of at most 500 characters"
	case len(r.Metadata) > payments.MaxMetadataKeys:
		return "at most 20 metadata keys"
	}
	for k, v := range r.Metadata {
		if k == "" || !storableText(k, payments.MaxMetadataKey) || !storableText(v, payments.MaxMetadataValue) {
			return "metadata keys of 1 to 40 characters, values of at most 500, storable"
		}
	}
	return ""
}

// storable reports whether Postgres can store s as text: valid UTF-8
// without NUL.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// storableText reports whether s is storable and at most max characters.
func storableText(s string, max int) bool { return storable(s) && utf8.RuneCountInString(s) <= max }

// postBody posts body to path and checks the answer: 201 with the request
// handed to the service, or a problem of the client's making (400
// malformed, 422 invalid, 413 too large) with nothing handed to it. It
// returns what reached the service, nil if nothing did.
func postBody[T any](t *testing.T, metrics *idempotency.Metrics, path string, body []byte, reached func(*bodies) *T) *T {
	t.Helper()
	svc := &bodies{}
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", "fuzz")
	rec := serve(svc, metrics, r)
	req := reached(svc)
	switch rec.Code {
	case http.StatusCreated:
		if req == nil {
			t.Fatalf("%q: 201, but nothing reached the service", body)
		}
		return req
	case http.StatusBadRequest:
		wantProblem(t, strconv.Quote(string(body)), rec, web.Malformed)
	case http.StatusUnprocessableEntity:
		if p := wantProblem(t, strconv.Quote(string(body)), rec, probInvalid); len(p.Errors) == 0 {
			t.Fatalf("%q: 422 without the fields at fault: %s", body, rec.Body)
		}
	case http.StatusRequestEntityTooLarge:
		if len(body) <= web.MaxBody {
			t.Fatalf("%q: 413 for %d bytes, within the limit of %d", body, len(body), web.MaxBody)
		}
	default:
		t.Fatalf("%q: answered %d, want 201, 400, 413 or 422: %s", body, rec.Code, rec.Body)
	}
	if req != nil {
		t.Fatalf("%q: refused with %d, yet %+v reached the service", body, rec.Code, *req)
	}
	return nil
}

// sendAgain sends the request that reached the service, encoded as the
// client would, and wants the same request to reach it.
func sendAgain[T any](t *testing.T, metrics *idempotency.Metrics, path string, req *T, reached func(*bodies) *T) {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if again := postBody(t, metrics, path, body, reached); !reflect.DeepEqual(again, req) {
		t.Fatalf("%+v, sent again as %s, reached the service as %+v", *req, body, again)
	}
}

// wantProblem checks that rec, the answer to what, is a problem of kind.
func wantProblem(t *testing.T, what string, rec *httptest.ResponseRecorder, kind web.Kind) problemBody {
	t.Helper()
	var p problemBody
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s: %d with Content-Type %q, want a problem", what, rec.Code, ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Type != kind.Slug || p.Status != rec.Code || p.Detail == "" {
		t.Fatalf("%s: problem %s (%v), want a %s with a detail", what, rec.Body, err, kind.Slug)
	}
	return p
}

// bodies is a Service that keeps what each POST route handed it.
type bodies struct {
	Service // nil: the targets call nothing else
	create  *payments.CreateRequest
	refund  *payments.RefundRequest
}

func (b *bodies) Create(_ context.Context, _ idempotency.Request, body payments.CreateRequest, _ string) (idempotency.Response, error) {
	b.create = &body
	return idempotency.Response{Status: http.StatusCreated}, nil
}

func (b *bodies) Refund(_ context.Context, _ idempotency.Request, _ string, body payments.RefundRequest, _ string) (idempotency.Response, error) {
	b.refund = &body
	return idempotency.Response{Status: http.StatusCreated}, nil
}

// The cursor of GET /v1/payments is starting_after, the id of the last
// payment of the page before: no codec of its own, so the property is that
// the id reaches the store as the client sent it, both ways.

func FuzzListPayments_TheCursorReachesTheStoreAsSent(f *testing.F) {
	f.Add("", "")
	f.Add("1", "pay_1")
	f.Add("100", "pay_01J9Z6Q8 é/?&=#%")
	f.Add("0", "pay_1")
	f.Add("101", "")
	f.Add("ten", "pay_1")
	f.Add("-1", "pay_1")
	f.Add("10", "pay\x00")
	f.Add("10", "pay\xff")
	metrics := fuzzMetrics(f)
	f.Fuzz(func(t *testing.T, limit, cursor string) {
		// The store holds one payment, whose id is the cursor.
		store := &pageStore{id: cursor}
		rec := list(store, metrics, url.Values{"limit": {limit}, "starting_after": {cursor}})
		n, err := strconv.Atoi(limit)
		if limit == "" {
			n, err = defaultPageSize, nil
		}
		switch {
		case err != nil || n < 1 || n > maxPageSize, !storable(cursor):
			if rec.Code != http.StatusBadRequest || store.asked {
				t.Fatalf("limit %q, starting_after %q: %d, store asked %v; want 400 and the store not asked", limit, cursor, rec.Code, store.asked)
			}
			wantProblem(t, "starting_after "+strconv.Quote(cursor), rec, web.BadQuery)
			return
		case rec.Code != http.StatusOK:
			t.Fatalf("limit %q, starting_after %q: %d, want 200: %s", limit, cursor, rec.Code, rec.Body)
		case store.limit != n || store.after != cursor:
			t.Fatalf("limit %q, starting_after %q reached the store as %d, %q", limit, cursor, store.limit, store.after)
		}

		// The other way: the id a page ends with, as the client reads
		// it, is a cursor that names the same payment.
		store = &pageStore{id: cursor}
		var page struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		rec = list(store, metrics, url.Values{})
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || len(page.Data) != 1 {
			t.Fatalf("first page: %d %s (%v), want the one payment", rec.Code, rec.Body, err)
		}
		list(store, metrics, url.Values{"starting_after": {page.Data[0].ID}})
		if store.after != cursor {
			t.Fatalf("the page ended with %q; sent back, it reached the store as %q", cursor, store.after)
		}
	})
}

func list(store payments.Store, metrics *idempotency.Metrics, q url.Values) *httptest.ResponseRecorder {
	svc := payments.NewService(payments.Config{Store: store, Log: slog.New(slog.DiscardHandler)})
	return serve(svc, metrics, httptest.NewRequest(http.MethodGet, "/v1/payments?"+q.Encode(), nil))
}

// pageStore holds one payment, with the id it is given, and records the
// page it was asked for.
type pageStore struct {
	payments.Store // nil: listing asks for nothing else
	id             string
	asked          bool
	limit          int
	after          string
}

func (s *pageStore) Payments(_ context.Context, _ string, limit int, after string) ([]payments.Payment, bool, error) {
	s.asked, s.limit, s.after = true, limit, after
	switch after {
	case "":
		return []payments.Payment{{ID: s.id, Status: payments.StatusSucceeded}}, false, nil
	case s.id:
		return nil, false, nil
	}
	return nil, false, payments.ErrBadCursor
}

// serve serves r with the payment routes alone: no authentication or rate
// limits stand in front of what the targets send.
func serve(svc Service, metrics *idempotency.Metrics, r *http.Request) *httptest.ResponseRecorder {
	log := slog.New(slog.DiscardHandler)
	mux := chi.NewRouter()
	mux.Route("/v1", Routes(Config{Service: svc, Guard: &idempotency.Guard{Metrics: metrics, Log: log}, Log: log}))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, r)
	return rec
}

func fuzzMetrics(f *testing.F) *idempotency.Metrics {
	f.Helper()
	m, err := idempotency.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	return m
}
