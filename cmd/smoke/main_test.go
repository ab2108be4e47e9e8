package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

const testKey = "test_key"

func TestRun_PassesEveryStepAgainstAConformingService(t *testing.T) {
	srv := httptest.NewServer(new(fakeAPI))
	defer srv.Close()
	env := map[string]string{"SMOKE_URL": srv.URL, "SMOKE_API_KEY": testKey}
	var out bytes.Buffer

	err := run(t.Context(), nil, func(k string) string { return env[k] }, &out)

	if err != nil {
		t.Errorf("run = %v, want nil; output:\n%s", err, &out)
	}
	for _, step := range stepNames {
		if !strings.Contains(out.String(), "PASS "+step+"\n") {
			t.Errorf("output lacks PASS %s:\n%s", step, &out)
		}
	}
}

// stepNames are smoke's steps, in order.
var stepNames = []string{"readiness", "create payment", "replay with the same Idempotency-Key",
	"get payment", "list payments", "refund part of the payment", "replay the refund", "refund more than is left",
	"list refunds", "declined payment", "unauthenticated request"}

func TestRun_StopsAtTheFirstFailingStepAndSkipsTheRest(t *testing.T) {
	tests := []struct {
		name    string
		api     *fakeAPI
		failing int    // index of the step that fails
		fail    string // its FAIL line starts so
	}{
		{"never ready", &fakeAPI{notReady: true}, 0, "FAIL readiness: not ready within the timeout; last: status 503, want 200"},
		{"replay not marked", &fakeAPI{unmarkedReplays: true}, 2, "FAIL replay with the same Idempotency-Key: header Idempotent-Replayed"},
		{"refunds without limit", &fakeAPI{refundsUnbounded: true}, 7, "FAIL refund more than is left: status 201, want 422"},
		{"open to anyone", &fakeAPI{openToAll: true}, 10, "FAIL unauthenticated request: status 200, want 401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.api)
			defer srv.Close()
			var out bytes.Buffer

			err := run(t.Context(), []string{"-url", srv.URL, "-api-key", testKey, "-timeout", "1s"},
				func(string) string { return "" }, &out)

			if err == nil {
				t.Errorf("run = nil, want an error; output:\n%s", &out)
			}
			// One line per step: PASS before the failing one, SKIP after.
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != len(stepNames) {
				t.Fatalf("%d lines, want one per step (%d):\n%s", len(lines), len(stepNames), &out)
			}
			for i, step := range stepNames {
				want := "PASS " + step
				switch {
				case i == tt.failing:
					want = tt.fail
				case i > tt.failing:
					want = "SKIP " + step
				}
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("line %d = %q, want it to start with %q", i+1, lines[i], want)
				}
			}
		})
	}
}

// fakeAPI is the least of payservice's API that smoke checks.
// Each switch breaks one contract.
type fakeAPI struct {
	notReady         bool // /health/ready answers 503
	unmarkedReplays  bool // replays lack Idempotent-Replayed
	openToAll        bool // /v1 needs no API key
	refundsUnbounded bool // refunds may exceed the payment

	mu       sync.Mutex
	answers  map[string]answer   // the first answer per Idempotency-Key
	ids      []string            // payments created, oldest first
	refunded map[string]int      // payment id → amount refunded
	refunds  map[string][]string // payment id → its refunds' JSON, oldest first
}

type answer struct {
	status int
	body   string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasPrefix(r.URL.Path, "/v1/") && !f.openToAll && r.Header.Get("Authorization") != "Bearer "+testKey {
		w.Header().Set("WWW-Authenticate", "Bearer")
		problem(w, http.StatusUnauthorized, "")
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/health/ready" && f.notReady:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"status":"unavailable","checks":{"postgres":"unavailable: refused"}}`)
	case r.Method == http.MethodGet && r.URL.Path == "/health/ready":
		fmt.Fprint(w, `{"status":"ok","checks":{"migrations":"ok","postgres":"ok","redis":"ok"}}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/payments":
		key := r.Header.Get("Idempotency-Key")
		a, seen := f.answers[key]
		if seen && !f.unmarkedReplays {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		if !seen {
			a = f.create(r)
			if f.answers == nil {
				f.answers = make(map[string]answer)
			}
			f.answers[key] = a
		}
		if a.status == http.StatusPaymentRequired {
			problem(w, a.status, `,"payment":`+a.body)
			return
		}
		w.WriteHeader(a.status)
		fmt.Fprint(w, a.body)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/payments":
		var data []string
		for _, id := range f.ids {
			data = append([]string{f.paymentJSON(id, "succeeded")}, data...) // newest first
		}
		fmt.Fprintf(w, `{"data":[%s],"has_more":false}`, strings.Join(data, ","))
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/refunds"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/payments/"), "/refunds")
		key := "refund " + r.Header.Get("Idempotency-Key")
		a, seen := f.answers[key]
		if seen {
			w.Header().Set("Idempotent-Replayed", "true")
		} else {
			a = f.refund(id, r)
			f.answers[key] = a
		}
		if a.status == http.StatusUnprocessableEntity {
			problem(w, a.status, `,"type":"x/refund-too-large"`)
			return
		}
		w.WriteHeader(a.status)
		fmt.Fprint(w, a.body)
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/refunds"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/payments/"), "/refunds")
		fmt.Fprintf(w, `{"data":[%s]}`, strings.Join(f.refunds[id], ","))
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/payments/"):
		fmt.Fprint(w, f.paymentJSON(strings.TrimPrefix(r.URL.Path, "/v1/payments/"), "succeeded"))
	default:
		problem(w, http.StatusNotFound, "")
	}
}

// create charges a new payment; amounts ending in 402 are declined.
func (f *fakeAPI) create(r *http.Request) answer {
	var req struct{ Amount int }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return answer{http.StatusBadRequest, `{}`}
	}
	id := fmt.Sprintf("pay_%d", len(f.answers)+1)
	if req.Amount%1000 == 402 {
		return answer{http.StatusPaymentRequired, f.paymentJSON(id, "failed")}
	}
	f.ids = append(f.ids, id)
	return answer{http.StatusCreated, f.paymentJSON(id, "succeeded")}
}

// refund refunds a payment of 1000 (every payment here is).
func (f *fakeAPI) refund(paymentID string, r *http.Request) answer {
	var req struct{ Amount int }
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return answer{http.StatusBadRequest, `{}`}
	}
	if f.refunded == nil {
		f.refunded, f.refunds = map[string]int{}, map[string][]string{}
	}
	if f.refunded[paymentID]+req.Amount > 1000 && !f.refundsUnbounded {
		return answer{http.StatusUnprocessableEntity, ""}
	}
	f.refunded[paymentID] += req.Amount
	body := fmt.Sprintf(`{"id":"re_%d","payment_id":%q,"amount":%d,"status":"succeeded"}`, len(f.answers)+1, paymentID, req.Amount)
	f.refunds[paymentID] = append(f.refunds[paymentID], body)
	return answer{http.StatusCreated, body}
}

func (f *fakeAPI) paymentJSON(id, status string) string {
	return fmt.Sprintf(`{"id":%q,"status":%q,"provider_charge_id":"ch_%s","amount_refunded":%d}`, id, status, id, f.refunded[id])
}

// problem writes problem+json; extra is more members, each with a leading comma.
func problem(w http.ResponseWriter, status int, extra string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"about:blank","status":%d%s}`, status, extra)
}
