package paymentsapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/api"
	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/platform/health"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// created is a create request as it reached the service.
type created struct {
	req       idempotency.Request
	body      payments.CreateRequest
	requestID string
}

// recordingService is a Service that records what reaches it, and
// answers like the real one would: a payment rendered by the API's Views.
type recordingService struct {
	mu      sync.Mutex
	written []created
	err     error // returned by every call when set
	payment payments.Payment
	refund  payments.Refund // the refund Refund makes, and Refunds lists
	replay  bool
}

func (s *recordingService) Create(_ context.Context, req idempotency.Request, body payments.CreateRequest, requestID string) (idempotency.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return idempotency.Response{}, s.err
	}
	s.written = append(s.written, created{req, body, requestID})
	p := s.payment
	if p.ID == "" {
		p = payments.Payment{
			ID: "pay_1", ClientID: req.Scope, Amount: body.Amount, Currency: body.Currency,
			Status: payments.StatusSucceeded, ProviderChargeID: "ch_1", Metadata: body.Metadata,
			CreatedAt: time.Unix(0, 0), UpdatedAt: time.Unix(0, 0),
		}
	}
	resp, err := Views{ProblemTypes: testProblemTypes}.Payment(p, requestID)
	resp.Replayed = s.replay
	return resp, err
}

func (s *recordingService) Refund(_ context.Context, _ idempotency.Request, paymentID string, body payments.RefundRequest, requestID string) (idempotency.Response, error) {
	if s.err != nil {
		return idempotency.Response{}, s.err
	}
	r := s.refund
	r.PaymentID, r.Amount, r.Reason = paymentID, body.Amount, body.Reason
	resp, err := Views{ProblemTypes: testProblemTypes}.Refund(r, requestID)
	resp.Replayed = s.replay
	return resp, err
}

func (s *recordingService) Refunds(_ context.Context, clientID, paymentID string) ([]payments.Refund, error) {
	if s.err != nil {
		return nil, s.err
	}
	if clientID != "client_a" || paymentID != "pay_1" {
		return nil, payments.ErrNotFound
	}
	r := s.refund
	r.PaymentID = paymentID
	return []payments.Refund{r}, nil
}

func (s *recordingService) Get(_ context.Context, clientID, id string) (payments.Payment, error) {
	if s.err != nil {
		return payments.Payment{}, s.err
	}
	if clientID != "client_a" || id != "pay_1" {
		return payments.Payment{}, payments.ErrNotFound
	}
	return payments.Payment{ID: "pay_1", Status: payments.StatusSucceeded, Amount: 5, Currency: "eur", ProviderChargeID: "ch_1"}, nil
}

func (s *recordingService) List(_ context.Context, clientID string, limit int, after string) (payments.Page, error) {
	if s.err != nil {
		return payments.Page{}, s.err
	}
	return payments.Page{Payments: []payments.Payment{{ID: "pay_1", Status: payments.StatusSucceeded, Amount: 5, Currency: "eur", ProviderChargeID: "ch_1"}}, HasMore: limit == 1}, nil
}

// unlimited never refuses.
type unlimited struct{}

func (unlimited) Allow(string) resilience.Decision {
	return resilience.Decision{Allowed: true, Limit: 1000, Remaining: 999}
}

func newTestHandler(t *testing.T, svc Service) http.Handler {
	t.Helper()
	return newLimitedHandler(t, svc, unlimited{}, unlimited{})
}

// testProblemTypes prefixes the problem types the test router writes.
const testProblemTypes = "https://payservice.example/problems/"

func newLimitedHandler(t *testing.T, svc Service, clients, anonymous web.RateLimiter) http.Handler {
	t.Helper()
	return newRouter(t, svc, clients, anonymous, slog.New(slog.NewTextHandler(io.Discard, nil)), func() bool { return true })
}

func idemMetrics(t *testing.T) *idempotency.Metrics {
	t.Helper()
	m, err := idempotency.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// newRouter returns the router as the service builds it, with every
// exchange it serves checked against the OpenAPI description.
func newRouter(t *testing.T, svc Service, clients, anonymous web.RateLimiter, log *slog.Logger, ready func() bool) http.Handler {
	t.Helper()
	return spec.Handler(t, buildRouter(t, svc, clients, anonymous, log, ready, newProbes(true)))
}

// newProbes returns the service's readiness checks, passing, with the
// schema migrated or not.
func newProbes(migrated bool) *health.Health {
	ok := func(context.Context) error { return nil }
	h := health.New(time.Second, slog.New(slog.DiscardHandler),
		health.Check{Name: "postgres", Probe: ok},
		health.Check{Name: "redis", Optional: true, Probe: ok})
	if migrated {
		h.SetMigrated()
	}
	return h
}

func buildRouter(t *testing.T, svc Service, clients, anonymous web.RateLimiter, log *slog.Logger, ready func() bool, probes *health.Health) http.Handler {
	t.Helper()
	return web.NewRouter(web.RouterConfig{
		Auth:           web.NewAuthenticator("payservice", map[string]string{"client_a": "key_a", "client_b": "key_b"}),
		ClientLimit:    clients,
		AnonymousLimit: anonymous,
		Ready:          ready,
		Live:           probes.Live,
		ReadyProbe:     probes.Ready,
		Log:            log,
		Metrics:        prometheus.NewRegistry(),
		RequestTimeout: 5 * time.Second,
		ProblemTypes:   testProblemTypes,
		OpenAPI:        api.Spec,
	}, Routes(Config{Service: svc, Guard: &idempotency.Guard{Metrics: idemMetrics(t), Log: log}, Log: log}))
}

const validBody = `{"amount":1000,"currency":"USD","description":"tea","metadata":{"order":"42"}}`

// postPayment builds a valid POST /v1/payments; edit modifies it.
func postPayment(body string, edit func(*http.Request)) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/payments", strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer key_a")
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", "order-42")
	if edit != nil {
		edit(r)
	}
	return r
}

type problemBody struct {
	Type      string           `json:"type"`
	Title     string           `json:"title"`
	Status    int              `json:"status"`
	Detail    string           `json:"detail"`
	RequestID string           `json:"request_id"`
	Errors    []web.FieldError `json:"errors"`
}

func decodeProblem(t *testing.T, rec *httptest.ResponseRecorder) problemBody {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json; body %s", ct, rec.Body)
	}
	var p problemBody
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body: %v: %s", err, rec.Body)
	}
	if p.Status != rec.Code || p.Title == "" || p.Detail == "" || !strings.HasPrefix(p.Type, testProblemTypes) {
		t.Errorf("incomplete problem for %d: %+v", rec.Code, p)
	}
	if p.RequestID == "" || p.RequestID != rec.Header().Get("X-Request-Id") {
		t.Errorf("problem request_id %q does not match X-Request-Id %q", p.RequestID, rec.Header().Get("X-Request-Id"))
	}
	return p
}

func TestCreatePayment_RejectsBadInputWithoutWriting(t *testing.T) {
	tests := []struct {
		name       string
		req        *http.Request
		wantStatus int
		wantType   string // suffix of the problem type
		wantDetail string // substring of the detail
	}{
		// 401: no or wrong credentials.
		{"no authorization", postPayment(validBody, func(r *http.Request) { r.Header.Del("Authorization") }), 401, "/unauthorized", "Bearer"},
		{"wrong key", postPayment(validBody, func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }), 401, "/unauthorized", "not valid"},
		{"wrong scheme", postPayment(validBody, func(r *http.Request) { r.Header.Set("Authorization", "Basic key_a") }), 401, "/unauthorized", "Bearer"},
		// 415: not JSON.
		{"no content type", postPayment(validBody, func(r *http.Request) { r.Header.Del("Content-Type") }), 415, "/unsupported-media-type", "application/json"},
		{"text/plain", postPayment(validBody, func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }), 415, "/unsupported-media-type", "text/plain"},
		{"latin-1 charset", postPayment(validBody, func(r *http.Request) { r.Header.Set("Content-Type", "application/json; charset=latin1") }), 415, "/unsupported-media-type", "UTF-8"},
		// 400: idempotency key.
		{"missing idempotency key", postPayment(validBody, func(r *http.Request) { r.Header.Del("Idempotency-Key") }), 400, "/invalid-idempotency-key", "required"},
		{"key with space", postPayment(validBody, func(r *http.Request) { r.Header.Set("Idempotency-Key", "a b") }), 400, "/invalid-idempotency-key", "printable"},
		{"key too long", postPayment(validBody, func(r *http.Request) { r.Header.Set("Idempotency-Key", strings.Repeat("k", 256)) }), 400, "/invalid-idempotency-key", "255"},
		{"key not ascii", postPayment(validBody, func(r *http.Request) { r.Header.Set("Idempotency-Key", "clé") }), 400, "/invalid-idempotency-key", "printable"},
		// 413: too large, declared or not.
		{"body too large", postPayment(`{"amount":1,"currency":"usd","description":"`+strings.Repeat("x", 70<<10)+`"}`, nil), 413, "/request-too-large", "65536"},
		{"body too large, length unknown", postPayment(`{"description":"`+strings.Repeat("x", 70<<10)+`"}`, func(r *http.Request) { r.ContentLength = -1 }), 413, "/request-too-large", "65536"},
		// 400: syntax.
		{"empty body", postPayment(``, nil), 400, "/malformed-request", "empty"},
		{"malformed json", postPayment(`{"amount":1000,`, nil), 400, "/malformed-request", "not valid JSON"},
		{"syntax error", postPayment(`{"amount":10 00}`, nil), 400, "/malformed-request", "at byte"},
		{"array body", postPayment(`[1,2]`, nil), 400, "/malformed-request", "JSON object"},
		{"amount as string", postPayment(`{"amount":"1000","currency":"usd"}`, nil), 400, "/malformed-request", `"amount" must be an integer`},
		{"fractional amount", postPayment(`{"amount":10.5,"currency":"usd"}`, nil), 400, "/malformed-request", `"amount" must be an integer`},
		{"amount overflows", postPayment(`{"amount":99999999999999999999,"currency":"usd"}`, nil), 400, "/malformed-request", `"amount" must be an integer`},
		{"metadata value not string", postPayment(`{"amount":1,"currency":"usd","metadata":{"a":1}}`, nil), 400, "/malformed-request", `"metadata" must be a string`},
		{"unknown field", postPayment(`{"amount":1000,"currency":"usd","amout":5}`, nil), 400, "/malformed-request", `Unknown field "amout"`},
		{"null body", postPayment(`null`, nil), 400, "/malformed-request", "JSON object, not null"},
		{"metadata value null", postPayment(`{"amount":1,"currency":"usd","metadata":{"a":null}}`, nil), 400, "/malformed-request", `"metadata" must be a string, not null`},
		{"trailing data", postPayment(`{"amount":1000,"currency":"usd"} {}`, nil), 400, "/malformed-request", "after the JSON object"},
		// 400: null is no string or number. encoding/json would leave the
		// field as it was: an empty description accepted, an amount
		// refused as 422 instead of 400. (A null metadata is a nil map,
		// as Go's encoder writes one: accepted.)
		{"description null", postPayment(`{"amount":1000,"currency":"usd","description":null}`, nil), 400, "/malformed-request", `"description" is null`},
		{"amount null", postPayment(`{"amount":null,"currency":"usd"}`, nil), 400, "/malformed-request", `"amount" is null`},
		{"currency null", postPayment(`{"amount":1000,"currency":null}`, nil), 400, "/malformed-request", `"currency" is null`},
		// 400: a body that says two things at once. encoding/json would
		// take the last duplicate, and match names ignoring case, while
		// the idempotency fingerprint hashes the body as sent: two such
		// bodies meaning different amounts could replay each other.
		{"duplicate field", postPayment(`{"amount":5,"currency":"usd","amount":1000}`, nil), 400, "/malformed-request", `"amount" appears twice`},
		{"field in another case", postPayment(`{"amount":5,"currency":"usd","AMOUNT":1000}`, nil), 400, "/malformed-request", `Unknown field "AMOUNT"`},
		{"field only in another case", postPayment(`{"Amount":1000,"currency":"usd"}`, nil), 400, "/malformed-request", `Unknown field "Amount"`},
		{"duplicate metadata key", postPayment(`{"amount":1,"currency":"usd","metadata":{"a":"x","a":"y"}}`, nil), 400, "/malformed-request", `"metadata.a" appears twice`},
		// 422: semantics.
		{"zero amount", postPayment(`{"amount":0,"currency":"usd"}`, nil), 422, "/invalid-request", "amount"},
		{"negative amount", postPayment(`{"amount":-5,"currency":"usd"}`, nil), 422, "/invalid-request", "amount"},
		{"amount too large", postPayment(`{"amount":100000000,"currency":"usd"}`, nil), 422, "/invalid-request", "99999999"},
		{"missing amount", postPayment(`{"currency":"usd"}`, nil), 422, "/invalid-request", "amount"},
		{"missing currency", postPayment(`{"amount":1}`, nil), 422, "/invalid-request", "currency: is required"},
		{"unknown currency", postPayment(`{"amount":1,"currency":"abc"}`, nil), 422, "/invalid-request", `"abc" is not an ISO 4217`},
		{"description too long", postPayment(`{"amount":1,"currency":"usd","description":"`+strings.Repeat("é", 501)+`"}`, nil), 422, "/invalid-request", "501 characters"},
		{"too many metadata keys", postPayment(`{"amount":1,"currency":"usd","metadata":{`+manyKeys(21)+`}}`, nil), 422, "/invalid-request", "21 keys"},
		{"currency spelt with a kelvin sign", postPayment(`{"amount":1,"currency":"\u212AES"}`, nil), 422, "/invalid-request", "is not an ISO 4217"},
		{"NUL in description", postPayment(`{"amount":1,"currency":"usd","description":"a\u0000b"}`, nil), 422, "/invalid-request", "NUL"},
		{"NUL in metadata", postPayment(`{"amount":1,"currency":"usd","metadata":{"k":"\u0000"}}`, nil), 422, "/invalid-request", "NUL"},
		{"metadata key too long", postPayment(`{"amount":1,"currency":"usd","metadata":{"`+strings.Repeat("k", 41)+`":"v"}}`, nil), 422, "/invalid-request", "1 to 40"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := &recordingService{}
			rec := httptest.NewRecorder()
			newTestHandler(t, svc).ServeHTTP(rec, tt.req)

			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			p := decodeProblem(t, rec)
			if !strings.HasSuffix(p.Type, tt.wantType) {
				t.Errorf("type %q, want suffix %q", p.Type, tt.wantType)
			}
			if !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("detail %q, want it to mention %q", p.Detail, tt.wantDetail)
			}
			if len(svc.written) != 0 {
				t.Errorf("a rejected request reached the service: %+v", svc.written)
			}
			if tt.wantStatus == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func manyKeys(n int) string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf(`"k%d":"v"`, i)
	}
	return strings.Join(keys, ",")
}

func TestCreatePayment_ValidationListsEveryField(t *testing.T) {
	rec := httptest.NewRecorder()
	newTestHandler(t, &recordingService{}).ServeHTTP(rec, postPayment(`{"amount":0,"currency":"xyz"}`, nil))
	p := decodeProblem(t, rec)
	fields := map[string]bool{}
	for _, e := range p.Errors {
		fields[e.Field] = true
	}
	if !fields["amount"] || !fields["currency"] || len(p.Errors) != 2 {
		t.Errorf("errors %+v, want one for amount and one for currency", p.Errors)
	}
}

func TestCreatePayment_Succeeds(t *testing.T) {
	svc := &recordingService{}
	rec := httptest.NewRecorder()
	req := postPayment(validBody, func(r *http.Request) { r.Header.Set("X-Request-Id", "trace-123") })
	newTestHandler(t, svc).ServeHTTP(rec, req)

	if rec.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Header().Get("X-Request-Id"); got != "trace-123" {
		t.Errorf("X-Request-Id %q, want the client's trace-123 echoed", got)
	}
	if got := rec.Header().Get("Location"); got != "/v1/payments/pay_1" {
		t.Errorf("Location %q", got)
	}
	if rec.Header().Get("Idempotent-Replayed") != "" {
		t.Error("a first answer carries Idempotent-Replayed")
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"id", "amount", "currency", "status", "description", "metadata", "provider_charge_id", "created_at", "updated_at"} {
		if _, ok := body[field]; !ok {
			t.Errorf("payment JSON lacks %q: %s", field, rec.Body)
		}
	}
	if len(svc.written) != 1 {
		t.Fatalf("service got %d creates", len(svc.written))
	}
	in := svc.written[0]
	if in.req.Scope != "client_a" || in.req.Key != "order-42" || in.body.Currency != "usd" || in.req.Fingerprint == "" || in.requestID != "trace-123" {
		t.Errorf("service input %+v", in)
	}
}

func TestCreatePayment_FingerprintIgnoresKeyOrderAndWhitespace(t *testing.T) {
	svc := &recordingService{}
	h := newTestHandler(t, svc)
	for _, body := range []string{
		`{"amount":1000,"currency":"usd","metadata":{"a":"1","b":"2"}}`,
		"{ \"metadata\": {\"b\":\"2\", \"a\":\"1\"},\n \"currency\":\"usd\", \"amount\": 1000 }",
	} {
		h.ServeHTTP(httptest.NewRecorder(), postPayment(body, nil))
	}
	h.ServeHTTP(httptest.NewRecorder(), postPayment(`{"amount":1001,"currency":"usd","metadata":{"a":"1","b":"2"}}`, nil))
	h.ServeHTTP(httptest.NewRecorder(), postPayment(`{"amount":1000,"currency":"usd","metadata":{"a":"1","b":"2"}}`, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer key_b")
	}))
	if len(svc.written) != 4 {
		t.Fatalf("%d creates, want 4", len(svc.written))
	}
	fp := func(i int) string { return svc.written[i].req.Fingerprint }
	if fp(0) != fp(1) {
		t.Error("same request, reordered and re-spaced: fingerprints differ")
	}
	if fp(0) == fp(2) {
		t.Error("different amount: same fingerprint")
	}
	if fp(0) == fp(3) {
		t.Error("different client: same fingerprint")
	}
}

func TestCreatePayment_OutcomesMapToStatuses(t *testing.T) {
	processing := payments.Payment{ID: "pay_p", Amount: 1000, Currency: "usd", Status: payments.StatusProcessing}
	declined := payments.Payment{ID: "pay_d", Amount: 1000, Currency: "usd", Status: payments.StatusFailed, FailureCode: "card_declined", ProviderChargeID: "ch_d"}
	succeeded := payments.Payment{ID: "pay_s", Amount: 1000, Currency: "usd", Status: payments.StatusSucceeded, ProviderChargeID: "ch_s"}
	tests := []struct {
		name         string
		payment      payments.Payment
		replay       bool
		err          error
		wantStatus   int
		wantReplayed bool
		wantRetry    bool
	}{
		{"charged", succeeded, false, nil, 201, false, false},
		{"declined", declined, false, nil, 402, false, false},
		{"unknown outcome", processing, false, nil, 202, false, false},
		{"replay of a charge", succeeded, true, nil, 201, true, false},
		{"replay of a decline", declined, true, nil, 402, true, false},
		{"key reused", payments.Payment{}, false, idempotency.ErrKeyReused, 422, false, false},
		{"in flight", payments.Payment{}, false, idempotency.ErrInFlight, 409, false, true},
		{"dependency down", payments.Payment{}, false, fmt.Errorf("%w: db gone", payments.ErrUnavailable), 503, false, true},
		{"deadline", payments.Payment{}, false, context.DeadlineExceeded, 503, false, true},
		{"bug", payments.Payment{}, false, errors.New("boom"), 500, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			newTestHandler(t, &recordingService{payment: tt.payment, replay: tt.replay, err: tt.err}).ServeHTTP(rec, postPayment(validBody, nil))
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if got := rec.Header().Get("Idempotent-Replayed") == "true"; got != tt.wantReplayed {
				t.Errorf("Idempotent-Replayed %v, want %v", got, tt.wantReplayed)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tt.wantRetry {
				t.Errorf("Retry-After present %v, want %v", got, tt.wantRetry)
			}
			if tt.wantStatus == 402 {
				var body struct {
					problemBody
					Payment paymentJSON `json:"payment"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatal(err)
				}
				if body.Payment.Status != "failed" || body.Payment.ID != "pay_d" || !strings.HasSuffix(body.Type, "/payment-declined") {
					t.Errorf("402 body %s", rec.Body)
				}
			}
			if tt.wantStatus >= 400 && tt.wantStatus != 402 {
				decodeProblem(t, rec)
			}
		})
	}
}

// postRefund builds a valid POST /v1/payments/pay_1/refunds.
func postRefund(body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/payments/pay_1/refunds", strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer key_a")
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", "refund-42")
	return r
}

func TestRefund_OutcomesMapToStatuses(t *testing.T) {
	succeeded := payments.Refund{ID: "re_s", Status: payments.StatusSucceeded, ProviderRefundID: "rf_s"}
	processing := payments.Refund{ID: "re_p", Status: payments.StatusProcessing}
	refused := payments.Refund{ID: "re_f", Status: payments.StatusFailed, FailureCode: "charge_disputed"}
	const valid = `{"amount":400,"reason":"requested_by_customer"}`
	tests := []struct {
		name         string
		refund       payments.Refund
		replay       bool
		err          error
		body         string
		wantStatus   int
		wantType     string // suffix of the problem type, for a problem
		wantReplayed bool
		wantRetry    bool
	}{
		{"refunded", succeeded, false, nil, valid, 201, "", false, false},
		{"unknown outcome", processing, false, nil, valid, 202, "", false, false},
		{"refused by the provider", refused, false, nil, valid, 422, "/refund-failed", false, false},
		{"replay of a refund", succeeded, true, nil, valid, 201, "", true, false},
		{"replay of a refusal", refused, true, nil, valid, 422, "/refund-failed", true, false},
		{"no such payment", payments.Refund{}, false, payments.ErrNotFound, valid, 404, "/not-found", false, false},
		{"payment not succeeded", payments.Refund{}, false, payments.ErrNotRefundable, valid, 409, "/payment-not-refundable", false, false},
		{"more than is left", payments.Refund{}, false, &payments.RefundTooLargeError{Requested: 400, Left: 100}, valid, 422, "/refund-too-large", false, false},
		{"key in flight", payments.Refund{}, false, idempotency.ErrInFlight, valid, 409, "/idempotency-key-in-flight", false, true},
		{"key reused", payments.Refund{}, false, idempotency.ErrKeyReused, valid, 422, "/idempotency-key-reused", false, false},
		{"dependency down", payments.Refund{}, false, fmt.Errorf("%w: db gone", payments.ErrUnavailable), valid, 503, "/unavailable", false, true},
		{"zero amount", succeeded, false, nil, `{"amount":0}`, 422, "/invalid-request", false, false},
		{"reason too long", succeeded, false, nil, `{"amount":1,"reason":"` + strings.Repeat("r", 201) + `"}`, 422, "/invalid-request", false, false},
		{"unknown field", succeeded, false, nil, `{"amount":1,"note":"x"}`, 400, "/malformed-request", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			newTestHandler(t, &recordingService{refund: tt.refund, replay: tt.replay, err: tt.err}).ServeHTTP(rec, postRefund(tt.body))
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if got := rec.Header().Get("Idempotent-Replayed") == "true"; got != tt.wantReplayed {
				t.Errorf("Idempotent-Replayed %v, want %v", got, tt.wantReplayed)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tt.wantRetry {
				t.Errorf("Retry-After present %v, want %v", got, tt.wantRetry)
			}
			if tt.wantType == "" {
				var r refundJSON
				if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || r.ID != tt.refund.ID || r.PaymentID != "pay_1" || r.Amount != 400 {
					t.Errorf("refund %s (%v), want %s of 400 for pay_1", rec.Body, err, tt.refund.ID)
				}
				return
			}
			if p := decodeProblem(t, rec); !strings.HasSuffix(p.Type, tt.wantType) {
				t.Errorf("type %q, want suffix %q", p.Type, tt.wantType)
			}
			if tt.wantType == "/refund-failed" {
				var body struct {
					Refund refundJSON `json:"refund"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Refund.Status != "failed" || body.Refund.FailureCode != "charge_disputed" {
					t.Errorf("422 body %s, want the failed refund", rec.Body)
				}
			}
		})
	}
}

func TestListRefunds_IsScopedToTheClient(t *testing.T) {
	h := newTestHandler(t, &recordingService{refund: payments.Refund{ID: "re_1", Amount: 400, Status: payments.StatusSucceeded, ProviderRefundID: "rf_1"}})
	get := func(key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/v1/payments/pay_1/refunds", nil)
		r.Header.Set("Authorization", "Bearer "+key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	rec := get("key_a")
	var list struct {
		Data []refundJSON `json:"data"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &list); rec.Code != 200 || err != nil || len(list.Data) != 1 || list.Data[0].ID != "re_1" {
		t.Errorf("owner: %d %s (%v), want the one refund", rec.Code, rec.Body, err)
	}
	if rec := get("key_b"); rec.Code != 404 {
		t.Errorf("another client: %d, want 404", rec.Code)
	} else {
		decodeProblem(t, rec)
	}
}

func TestGetPayment_IsScopedToTheClient(t *testing.T) {
	h := newTestHandler(t, &recordingService{})
	get := func(key, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.Header.Set("Authorization", "Bearer "+key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	if rec := get("key_a", "/v1/payments/pay_1"); rec.Code != 200 {
		t.Errorf("owner: %d %s", rec.Code, rec.Body)
	}
	if rec := get("key_b", "/v1/payments/pay_1"); rec.Code != 404 {
		t.Errorf("another client: %d, want 404", rec.Code)
	} else {
		decodeProblem(t, rec)
	}
}

func TestListPayments_ValidatesLimit(t *testing.T) {
	h := newTestHandler(t, &recordingService{})
	for _, tt := range []struct {
		query string
		want  int
	}{
		{"", 200}, {"?limit=1", 200}, {"?limit=100", 200},
		{"?limit=0", 400}, {"?limit=101", 400}, {"?limit=ten", 400}, {"?limit=-1", 400},
	} {
		r := httptest.NewRequest(http.MethodGet, "/v1/payments"+tt.query, nil)
		r.Header.Set("Authorization", "Bearer key_a")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != tt.want {
			t.Errorf("GET /v1/payments%s: %d, want %d: %s", tt.query, rec.Code, tt.want, rec.Body)
		}
		if tt.want == 200 {
			var page struct {
				Data    []map[string]any `json:"data"`
				HasMore *bool            `json:"has_more"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil || page.HasMore == nil || len(page.Data) != 1 {
				t.Errorf("page %s: %v", rec.Body, err)
			}
		}
	}
}

func TestRouter_UnknownRoutesAndMethodsAreProblems(t *testing.T) {
	h := newTestHandler(t, &recordingService{})
	for _, tt := range []struct {
		method, path string
		want         int
		allow        string
	}{
		{"GET", "/nope", 404, ""},
		{"DELETE", "/v1/payments/pay_1", 405, "GET"},
		{"PUT", "/v1/payments", 405, "GET, POST"},
		{"POST", "/health/ready", 405, "GET"},
	} {
		r := httptest.NewRequest(tt.method, tt.path, nil)
		r.Header.Set("Authorization", "Bearer key_a")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, rec.Code, tt.want)
		}
		if got := rec.Header().Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow %q, want %q", tt.method, tt.path, got, tt.allow)
		}
		decodeProblem(t, rec)
	}
}

func TestRequireReady_Answers503UntilMigrated(t *testing.T) {
	var migrated atomic.Bool
	h := newRouter(t, &recordingService{}, unlimited{}, unlimited{}, slog.New(slog.DiscardHandler), migrated.Load)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, postPayment(validBody, nil))
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("before migration: %d (Retry-After %q), want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	migrated.Store(true)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, postPayment(validBody, nil))
	if rec.Code != 201 {
		t.Fatalf("after migration: %d", rec.Code)
	}
}

func newKeyedLimiter(t *testing.T, perSecond float64, burst int) *resilience.KeyedLimiter {
	t.Helper()
	l, err := resilience.NewKeyedLimiter(resilience.LimiterSettings{Name: "test", PerSecond: perSecond, Burst: burst, MaxKeys: 1000}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRateLimit_ClientOverItsLimitGets429WithHeaders(t *testing.T) {
	svc := &recordingService{}
	h := newLimitedHandler(t, svc, newKeyedLimiter(t, 0.1, 2), unlimited{})
	for i := range 2 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, postPayment(validBody, func(r *http.Request) { r.Header.Set("Idempotency-Key", fmt.Sprint("k", i)) }))
		if rec.Code != 201 || rec.Header().Get("RateLimit-Remaining") != fmt.Sprint(1-i) || rec.Header().Get("RateLimit-Limit") != "2" {
			t.Fatalf("request %d: %d, headers %v", i+1, rec.Code, rec.Header())
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, postPayment(validBody, nil))
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d, want 429", rec.Code)
	}
	p := decodeProblem(t, rec)
	if !strings.HasSuffix(p.Type, "/rate-limited") {
		t.Errorf("type %q", p.Type)
	}
	for _, name := range []string{"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} {
		if rec.Header().Get(name) == "" {
			t.Errorf("429 without %s", name)
		}
	}
	if got := rec.Header().Get("Retry-After"); got != "10" { // one token at 0.1/s
		t.Errorf("Retry-After %q, want 10", got)
	}
	if len(svc.written) != 2 {
		t.Errorf("the limited request reached the service (%d creates)", len(svc.written))
	}

	// Another client is not affected.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, postPayment(validBody, func(r *http.Request) { r.Header.Set("Authorization", "Bearer key_b") }))
	if rec.Code != 201 {
		t.Errorf("client_b: %d, want 201", rec.Code)
	}
}

// newGuesser returns a function that sends one request with a wrong API
// key from addr, through an anonymous limit of 3 requests, and returns the
// status.
func newGuesser(t *testing.T) func(addr string) int {
	h := newLimitedHandler(t, &recordingService{}, unlimited{}, newKeyedLimiter(t, 0.1, 3))
	return func(addr string) int {
		r := postPayment(validBody, func(r *http.Request) { r.Header.Set("Authorization", "Bearer guess") })
		r.RemoteAddr = addr
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec.Code
	}
}

func TestRateLimit_FailedAuthenticationIsLimitedPerAddress(t *testing.T) {
	guess := newGuesser(t)
	for i := range 3 {
		if code := guess("192.0.2.1:1234"); code != 401 {
			t.Fatalf("guess %d: %d, want 401", i+1, code)
		}
	}
	if code := guess("192.0.2.1:5678"); code != 429 {
		t.Errorf("fourth guess from the same address (other port): %d, want 429", code)
	}
	if code := guess("198.51.100.7:1234"); code != 401 {
		t.Errorf("a guess from another address: %d, want 401", code)
	}
}

func TestAccessLog_NamesTheAuthenticatedClient(t *testing.T) {
	var logs bytes.Buffer
	handler := newRouter(t, &recordingService{}, unlimited{}, unlimited{}, slog.New(slog.NewJSONHandler(&logs, nil)), func() bool { return true })
	handler.ServeHTTP(httptest.NewRecorder(), postPayment(validBody, nil))
	if !strings.Contains(logs.String(), `"client_id":"client_a"`) {
		t.Errorf("access log lacks the client: %s", logs.String())
	}
}

func TestRateLimit_FailedAuthenticationIsLimitedPerIPv6Slash64(t *testing.T) {
	// A guesser rotating through addresses of its /64 spends one budget.
	guess := newGuesser(t)
	for i := range 3 {
		if code := guess(fmt.Sprintf("[2001:db8:1:2::%x]:1234", i+1)); code != 401 {
			t.Fatalf("guess %d: %d, want 401", i+1, code)
		}
	}
	if code := guess("[2001:db8:1:2:ffff::9]:1234"); code != 429 {
		t.Errorf("fourth guess from a new address in the same /64: %d, want 429", code)
	}
	if code := guess("[2001:db8:1:3::1]:1234"); code != 401 {
		t.Errorf("a guess from another /64: %d, want 401", code)
	}
}
