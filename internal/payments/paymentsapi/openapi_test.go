package paymentsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/resiliencekit/payservice/api"
	"github.com/resiliencekit/payservice/internal/platform/health"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
	"github.com/resiliencekit/payservice/internal/platform/web/openapitest"
)

// spec is the API description every exchange of these tests is checked
// against. One per test binary, so that it sees every operation the tests
// exercise: TestOpenAPI_EveryOperationIsExercised.
var spec = openapitest.MustLoad(api.Spec)

func TestMain(m *testing.M) { openapitest.Main(m, testenv.Main) }

func TestOpenAPI_EveryRouteIsDocumentedAndEveryOperationRouted(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	router := buildRouter(t, &recordingService{}, unlimited{}, unlimited{}, log, func() bool { return true }, newProbes(true))
	spec.CheckRoutes(t, router.(chi.Routes))
}

// TestOpenAPI_EveryOperationIsExercised runs once every other test of the
// package has (openapitest.CheckExercisedLast says how).
func TestOpenAPI_EveryOperationIsExercised(t *testing.T) { spec.CheckExercisedLast(t) }

func TestOpenAPI_IsServedAsEmbedded(t *testing.T) {
	rec := httptest.NewRecorder()
	newTestHandler(t, &recordingService{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != 200 || rec.Body.String() != string(api.Spec) {
		t.Errorf("GET /openapi.yaml: %d, %d bytes; want 200 with the %d embedded", rec.Code, rec.Body.Len(), len(api.Spec))
	}
}

func TestHealth_ProbesAnswerAsDocumented(t *testing.T) {
	shuttingDown := newProbes(true)
	shuttingDown.SetShuttingDown()
	failing := health.New(time.Second, slog.New(slog.DiscardHandler),
		health.Check{Name: "postgres", Probe: func(context.Context) error { return context.DeadlineExceeded }},
		health.Check{Name: "redis", Optional: true, Probe: func(context.Context) error { return errors.New("down") }})
	failing.SetMigrated()
	for _, tt := range []struct {
		name       string
		probes     *health.Health
		path       string
		wantStatus int
		want       string // a member of the body
	}{
		{"live", newProbes(false), "/health/live", 200, `"status":"ok"`},
		{"ready", newProbes(true), "/health/ready", 200, `"migrations":"ok"`},
		{"not migrated", newProbes(false), "/health/ready", 503, `"migrations":"pending"`},
		{"shutting down", shuttingDown, "/health/ready", 503, `"reason":"shutting down"`},
		{"dependencies failing", failing, "/health/ready", 503, `"redis":"degraded: failing"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := slog.New(slog.DiscardHandler)
			h := spec.Handler(t, buildRouter(t, &recordingService{}, unlimited{}, unlimited{}, log, func() bool { return true }, tt.probes))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if rec.Code != tt.wantStatus || !strings.Contains(rec.Body.String(), tt.want) || !json.Valid(rec.Body.Bytes()) {
				t.Errorf("GET %s: %d %s, want %d with %s", tt.path, rec.Code, rec.Body, tt.wantStatus, tt.want)
			}
		})
	}
}

// reports records what a check reports, instead of failing.
type reports []string

func (r *reports) Helper()                           {}
func (r *reports) Errorf(format string, args ...any) { *r = append(*r, fmt.Sprintf(format, args...)) }

// The description is strict where the server is: each of these answers
// breaks it in one way, and is reported.
func TestOpenAPI_DescriptionRefusesAnswersTheServerNeverGives(t *testing.T) {
	const failedRefund = `{"id":"re_1","payment_id":"pay_1","amount":1,"status":"failed","reason":"","provider_refund_id":null,"failure_code":"x","created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z"}`
	const payment = `{"id":"pay_1","amount":1000,"amount_refunded":0,"currency":"usd","status":"succeeded","description":"","metadata":{},"provider_charge_id":"ch_1","created_at":"2026-01-02T03:04:05Z","updated_at":"2026-01-02T03:04:05Z"}`
	v1 := func(kv ...string) http.Header {
		h := http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"r1"},
			"Ratelimit-Limit": {"10"}, "Ratelimit-Remaining": {"9"}, "Ratelimit-Reset": {"1"}}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	problem := func(typ string, status int, extra string) []byte {
		return fmt.Appendf(nil, `{"type":"https://payservice.example/problems/%s","title":"t","status":%d,"detail":"d","request_id":"r1"%s}`, typ, status, extra)
	}
	get := httptest.NewRequest(http.MethodGet, "/v1/payments/pay_1", nil)
	get.Header.Set("Authorization", "Bearer key_a")
	post := httptest.NewRequest(http.MethodPost, "/v1/payments", nil)
	post.Header.Set("Authorization", "Bearer key_a")
	post.Header.Set("Content-Type", "application/json")
	post.Header.Set("Idempotency-Key", "k")
	refund := httptest.NewRequest(http.MethodPost, "/v1/payments/pay_1/refunds", nil)
	refund.Header = post.Header
	body := []byte(`{"amount":1000,"currency":"usd"}`)
	for _, tt := range []struct {
		name string
		x    openapitest.Exchange
		want string
	}{
		{"a valid answer, for reference", openapitest.Exchange{Request: get, Status: 200, Header: v1(), Body: []byte(payment)}, ""},
		{"an unknown member", openapitest.Exchange{Request: get, Status: 200, Header: v1(), Body: []byte(strings.Replace(payment, `"id"`, `"note":"x","id"`, 1))}, "additional properties 'note' not allowed"},
		{"an upper-case currency", openapitest.Exchange{Request: get, Status: 200, Header: v1(), Body: []byte(strings.Replace(payment, `"usd"`, `"USD"`, 1))}, "at '/currency'"},
		{"no rate limit headers under /v1", openapitest.Exchange{Request: get, Status: 200, Header: http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"r1"}}, Body: []byte(payment)}, `"RateLimit-Limit" missing`},
		{"201 processing", openapitest.Exchange{Request: post, RequestBody: body, Status: 201, Header: v1("Location", "/v1/payments/pay_1"), Body: []byte(strings.Replace(payment, `"succeeded"`, `"processing"`, 1))}, "value must be 'succeeded'"},
		{"201 without Location", openapitest.Exchange{Request: post, RequestBody: body, Status: 201, Header: v1(), Body: []byte(payment)}, `"Location" missing`},
		{"202 replayed", openapitest.Exchange{Request: post, RequestBody: body, Status: 202, Header: v1("Location", "/v1/payments/pay_1", "Idempotent-Replayed", "true"), Body: []byte(strings.Replace(payment, `"succeeded"`, `"processing"`, 1))}, "Idempotent-Replayed is not documented for 202"},
		{"401 without WWW-Authenticate", openapitest.Exchange{Request: get, Status: 401, Header: v1("Content-Type", "application/problem+json"), Body: problem("unauthorized", 401, "")}, `"WWW-Authenticate" missing`},
		{"a problem of another status's type", openapitest.Exchange{Request: get, Status: 404, Header: v1("Content-Type", "application/problem+json"), Body: problem("rate-limited", 404, "")}, "does not match pattern '/not-found$'"},
		{"a problem as plain JSON", openapitest.Exchange{Request: get, Status: 404, Header: v1(), Body: problem("not-found", 404, "")}, "Content-Type has unexpected value"},
		{"a problem with an unknown member", openapitest.Exchange{Request: get, Status: 404, Header: v1("Content-Type", "application/problem+json"), Body: problem("not-found", 404, `,"hint":"x"`)}, "at '/hint'"},
		{"402 without the payment", openapitest.Exchange{Request: post, RequestBody: body, Status: 402, Header: v1("Content-Type", "application/problem+json"), Body: problem("payment-declined", 402, "")}, "missing property 'payment'"},
		{"409 in flight without Retry-After", openapitest.Exchange{Request: post, RequestBody: body, Status: 409, Header: v1("Content-Type", "application/problem+json"), Body: problem("idempotency-key-in-flight", 409, "")}, `"Retry-After" missing`},
		{"422 refund-failed, for reference", openapitest.Exchange{Request: refund, RequestBody: []byte(`{"amount":1}`), Status: 422, Header: v1("Content-Type", "application/problem+json"), Body: problem("refund-failed", 422, `,"refund":`+failedRefund)}, ""},
		{"422 refund-failed without the refund", openapitest.Exchange{Request: refund, RequestBody: []byte(`{"amount":1}`), Status: 422, Header: v1("Content-Type", "application/problem+json"), Body: problem("refund-failed", 422, "")}, "missing property 'refund'"},
		{"422 refund-too-large with a refund", openapitest.Exchange{Request: refund, RequestBody: []byte(`{"amount":1}`), Status: 422, Header: v1("Content-Type", "application/problem+json"), Body: problem("refund-too-large", 422, `,"refund":`+failedRefund)}, "'not' failed"},
		{"a rate limit policy header", openapitest.Exchange{Request: get, Status: 200, Header: v1("RateLimit-Policy", "10;w=1"), Body: []byte(payment)}, "Ratelimit-Policy is not documented"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got reports
			openapitest.MustLoad(api.Spec).Check(&got, tt.x)
			switch {
			case tt.want == "" && len(got) > 0:
				t.Errorf("reported a valid answer: %q", got)
			case tt.want != "" && !strings.Contains(strings.Join(got, "\n"), tt.want):
				t.Errorf("reported %q, want a report mentioning %q", got, tt.want)
			}
		})
	}
}
