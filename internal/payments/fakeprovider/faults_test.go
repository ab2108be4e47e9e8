package fakeprovider_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

func TestFaultsEndpoints_PutReplacesGetReflectsDeleteResets(t *testing.T) {
	p, srv := start(t)

	put := call(t, srv, http.MethodPut, "/_faults", "", `{"error_rate":0.25,"latency_ms":40,"charge_then_error_rate":0.5}`)
	want := fakeprovider.Faults{ErrorRate: 0.25, LatencyMS: 40, ChargeThenErrorRate: 0.5}
	if put.status != http.StatusOK || decode[fakeprovider.Faults](t, put) != want {
		t.Errorf("PUT = %d %s, want 200 %+v", put.status, put.body, want)
	}
	if got := decode[fakeprovider.Faults](t, call(t, srv, http.MethodGet, "/_faults", "", "")); got != want {
		t.Errorf("GET after PUT = %+v, want %+v", got, want)
	}
	if got := p.Faults(); got != want {
		t.Errorf("Faults() after PUT = %+v, want %+v", got, want)
	}

	// Fields left out are switched off, not kept.
	call(t, srv, http.MethodPut, "/_faults", "", `{"latency_ms":5}`)
	if got, want := p.Faults(), (fakeprovider.Faults{LatencyMS: 5}); got != want {
		t.Errorf("Faults() after partial PUT = %+v, want %+v", got, want)
	}

	del := call(t, srv, http.MethodDelete, "/_faults", "", "")
	if del.status != http.StatusOK || decode[fakeprovider.Faults](t, del) != (fakeprovider.Faults{}) {
		t.Errorf("DELETE = %d %s, want 200 and no faults", del.status, del.body)
	}
	if got := decode[fakeprovider.Faults](t, call(t, srv, http.MethodGet, "/_faults", "", "")); got != (fakeprovider.Faults{}) {
		t.Errorf("GET after DELETE = %+v, want no faults", got)
	}
}

func TestPutFaults_RejectsInvalidFaultsAndKeepsTheCurrentOnes(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantInMsg string
	}{
		{"error rate above 1", `{"error_rate":1.5}`, "error_rate"},
		{"negative error rate", `{"error_rate":-0.1}`, "error_rate"},
		{"charge-then-error rate above 1", `{"charge_then_error_rate":2}`, "charge_then_error_rate"},
		{"negative latency", `{"latency_ms":-1}`, "latency_ms"},
		{"latency above a minute", `{"latency_ms":60001}`, "latency_ms"},
		{"fractional latency", `{"latency_ms":1.5}`, "latency_ms"},
		{"unknown field", `{"error_rte":0.5}`, "error_rte"},
		{"malformed JSON", `{"error_rate":`, "decode"},
		{"empty body", ``, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			current := fakeprovider.Faults{ErrorRate: 0.1}
			if err := p.SetFaults(current); err != nil {
				t.Fatal(err)
			}

			got := call(t, srv, http.MethodPut, "/_faults", "", tt.body)

			if got.status != http.StatusBadRequest {
				t.Errorf("status = %d, want 400", got.status)
			}
			if e := decode[errorBody](t, got); !strings.Contains(e.Message, tt.wantInMsg) {
				t.Errorf("message = %q, want it to name %q", e.Message, tt.wantInMsg)
			}
			if f := p.Faults(); f != current {
				t.Errorf("faults = %+v, want them unchanged: %+v", f, current)
			}
		})
	}
}

func TestSetFaults_RejectsOutOfRangeFaults(t *testing.T) {
	tests := []struct {
		name   string
		faults fakeprovider.Faults
	}{
		{"error rate above 1", fakeprovider.Faults{ErrorRate: 1.01}},
		{"error rate NaN", fakeprovider.Faults{ErrorRate: math.NaN()}},
		{"charge-then-error rate NaN", fakeprovider.Faults{ChargeThenErrorRate: math.NaN()}},
		{"latency above MaxLatency", fakeprovider.Faults{LatencyMS: int(fakeprovider.MaxLatency.Milliseconds()) + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fakeprovider.New()

			if err := p.SetFaults(tt.faults); err == nil {
				t.Errorf("SetFaults(%+v) = nil, want an error", tt.faults)
			}
			if f := p.Faults(); f != (fakeprovider.Faults{}) {
				t.Errorf("faults = %+v, want none", f)
			}
		})
	}
}

func TestErrorRate_Answers503WithoutCharging(t *testing.T) {
	p, srv := start(t)
	mustSetFaults(t, p, fakeprovider.Faults{ErrorRate: 1})

	got := postCharge(t, srv, "k", 1000)

	if got.status != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", got.status)
	}
	if e := decode[errorBody](t, got); e.Error != "unavailable" {
		t.Errorf("error = %q, want unavailable", e.Error)
	}
	if ra := got.header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	if n := len(p.Charges()); n != 0 {
		t.Fatalf("ledger has %d charges, want none", n)
	}

	p.ResetFaults()
	retry := postCharge(t, srv, "k", 1000)
	again := postCharge(t, srv, "k", 1000)

	if retry.status != http.StatusCreated || again.status != http.StatusCreated {
		t.Errorf("statuses after the fault = %d, %d; want 201, 201", retry.status, again.status)
	}
	if n := len(p.Charges()); n != 1 {
		t.Errorf("ledger has %d charges, want 1", n)
	}
}

func TestChargeThenErrorRate_RecordsTheChargeAndAnswers500(t *testing.T) {
	p, srv := start(t)
	mustSetFaults(t, p, fakeprovider.Faults{ChargeThenErrorRate: 1})

	got := postCharge(t, srv, "k", 1000)

	if got.status != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500", got.status)
	}
	if e := decode[errorBody](t, got); e.Error != "internal" {
		t.Errorf("error = %q, want internal", e.Error)
	}
	ledger := p.ChargesByKey("k")
	if len(ledger) != 1 {
		t.Fatalf("ledger has %d charges for the key, want 1: the charge happened", len(ledger))
	}

	p.ResetFaults()
	retry := postCharge(t, srv, "k", 1000)

	if retry.status != http.StatusCreated {
		t.Errorf("retry status = %d, want 201", retry.status)
	}
	if ch := decode[fakeprovider.Charge](t, retry); ch.ID != ledger[0].ID {
		t.Errorf("retry answered charge %s, want the recorded %s", ch.ID, ledger[0].ID)
	}
	if n := len(p.Charges()); n != 1 {
		t.Errorf("ledger has %d charges, want 1", n)
	}
}

func TestErrorRate_Answers503WithoutRefunding(t *testing.T) {
	p, srv := start(t)
	ch := charged(t, srv, "charge-k", 1000)
	mustSetFaults(t, p, fakeprovider.Faults{ErrorRate: 1})

	got := postRefund(t, srv, "k", ch, 600)

	if got.status != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", got.status)
	}
	if e := decode[errorBody](t, got); e.Error != "unavailable" {
		t.Errorf("error = %q, want unavailable", e.Error)
	}
	if ra := got.header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	if n := len(p.Refunds()); n != 0 {
		t.Fatalf("ledger has %d refunds, want none", n)
	}

	p.ResetFaults()
	retry := postRefund(t, srv, "k", ch, 600)
	again := postRefund(t, srv, "k", ch, 600)

	if retry.status != http.StatusCreated || again.status != http.StatusCreated {
		t.Errorf("statuses after the fault = %d, %d; want 201, 201", retry.status, again.status)
	}
	if n := len(p.Refunds()); n != 1 {
		t.Errorf("ledger has %d refunds, want 1", n)
	}
}

func TestChargeThenErrorRate_RecordsTheRefundAndAnswers500(t *testing.T) {
	p, srv := start(t)
	ch := charged(t, srv, "charge-k", 1000)
	mustSetFaults(t, p, fakeprovider.Faults{ChargeThenErrorRate: 1})

	got := postRefund(t, srv, "k", ch, 600)

	if got.status != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500", got.status)
	}
	if e := decode[errorBody](t, got); e.Error != "internal" {
		t.Errorf("error = %q, want internal", e.Error)
	}
	ledger := p.RefundsByKey("k")
	if len(ledger) != 1 {
		t.Fatalf("ledger has %d refunds for the key, want 1: the refund happened", len(ledger))
	}

	p.ResetFaults()
	retry := postRefund(t, srv, "k", ch, 600)

	if retry.status != http.StatusCreated {
		t.Errorf("retry status = %d, want 201", retry.status)
	}
	if rf := decode[fakeprovider.Refund](t, retry); rf != ledger[0] {
		t.Errorf("retry answered refund %+v, want the recorded %+v", rf, ledger[0])
	}
	if n := len(p.Refunds()); n != 1 {
		t.Errorf("ledger has %d refunds, want 1", n)
	}
}

func TestChargeThenErrorRate_RecordsARefundsRefusalForItsKey(t *testing.T) {
	p, srv := start(t, sequentialIDs())
	mustSetFaults(t, p, fakeprovider.Faults{ChargeThenErrorRate: 1})

	got := postRefund(t, srv, "k", "ch_1", 600) // no such charge yet

	if got.status != http.StatusInternalServerError {
		t.Errorf("status = %d, want 500", got.status)
	}

	p.ResetFaults()
	charged(t, srv, "charge-k", 1000) // ch_1
	retry := postRefund(t, srv, "k", "ch_1", 600)

	if e := decode[errorBody](t, retry); retry.status != http.StatusNotFound || e.Error != "no_such_charge" {
		t.Errorf("retry = %d %s, want the recorded 404 no_such_charge", retry.status, retry.body)
	}
	if n := len(p.Refunds()); n != 0 {
		t.Errorf("ledger has %d refunds, want none", n)
	}
}

func TestFaults_ApplyToRefundReplaysWithoutChangingTheLedger(t *testing.T) {
	tests := []struct {
		name       string
		faults     fakeprovider.Faults
		wantStatus int
	}{
		{"error rate", fakeprovider.Faults{ErrorRate: 1}, http.StatusServiceUnavailable},
		{"charge-then-error rate", fakeprovider.Faults{ChargeThenErrorRate: 1}, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			ch := charged(t, srv, "charge-k", 1000)
			postRefund(t, srv, "k", ch, 600)
			before := p.Refunds()
			mustSetFaults(t, p, tt.faults)

			got := postRefund(t, srv, "k", ch, 600)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d", got.status, tt.wantStatus)
			}
			if after := p.Refunds(); len(after) != 1 || after[0] != before[0] {
				t.Errorf("ledger = %+v, want it unchanged: %+v", after, before)
			}
		})
	}
}

func TestFaults_ApplyToReplaysWithoutChangingTheLedger(t *testing.T) {
	tests := []struct {
		name       string
		faults     fakeprovider.Faults
		wantStatus int
	}{
		{"error rate", fakeprovider.Faults{ErrorRate: 1}, http.StatusServiceUnavailable},
		{"charge-then-error rate", fakeprovider.Faults{ChargeThenErrorRate: 1}, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, srv := start(t)
			postCharge(t, srv, "k", 1402)
			before := p.Charges()
			mustSetFaults(t, p, tt.faults)

			got := postCharge(t, srv, "k", 1402)

			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d", got.status, tt.wantStatus)
			}
			if after := p.Charges(); len(after) != 1 || after[0] != before[0] {
				t.Errorf("ledger = %+v, want it unchanged: %+v", after, before)
			}
		})
	}
}

func TestFaults_DrawFromTheInjectedRandomSource(t *testing.T) {
	tests := []struct {
		name         string
		faults       fakeprovider.Faults
		draws        []float64
		wantStatuses []int
	}{
		{"error rate draws below the rate fail", fakeprovider.Faults{ErrorRate: 0.5}, []float64{0.3, 0.7}, []int{503, 201}},
		{"charge-then-error rate draws below the rate fail", fakeprovider.Faults{ChargeThenErrorRate: 0.5}, []float64{0.7, 0.3}, []int{201, 500}},
		{"error rate is drawn first", fakeprovider.Faults{ErrorRate: 0.5, ChargeThenErrorRate: 0.5}, []float64{0.7, 0.3, 0.3}, []int{500, 503}},
		{"no faults, no draws", fakeprovider.Faults{}, nil, []int{201, 201}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			draws := tt.draws
			p, srv := start(t, fakeprovider.WithRandom(func() float64 {
				if len(draws) == 0 {
					t.Errorf("drew more random numbers than the %d scripted", len(tt.draws))
					return 0.999
				}
				d := draws[0]
				draws = draws[1:]
				return d
			}))
			mustSetFaults(t, p, tt.faults)

			for i, want := range tt.wantStatuses {
				if got := postCharge(t, srv, fmt.Sprintf("key-%d", i), 1000); got.status != want {
					t.Errorf("request %d: status = %d, want %d", i, got.status, want)
				}
			}
			if len(draws) != 0 {
				t.Errorf("%d scripted draws left unused", len(draws))
			}
		})
	}
}

func TestLatency_DelaysChargesAndRefundsButNotTheFaultControls(t *testing.T) {
	const latency = 250 * time.Millisecond
	tests := []struct {
		method    string
		target    string
		body      string
		wantDelay time.Duration
	}{
		{http.MethodPost, "/v1/charges", `{"amount":1000,"currency":"usd"}`, latency},
		{http.MethodPost, "/v1/charges", `{"amount":0}`, latency}, // even a rejection
		{http.MethodGet, "/v1/charges", "", latency},
		{http.MethodGet, "/v1/charges?idempotency_key=k", "", latency},
		{http.MethodPost, "/v1/refunds", `{"charge":"ch_1","amount":1000}`, latency}, // refused: no such charge
		{http.MethodPost, "/v1/refunds", `{"amount":0}`, latency},
		{http.MethodGet, "/v1/refunds", "", latency},
		{http.MethodGet, "/v1/refunds?idempotency_key=k", "", latency},
		{http.MethodGet, "/_faults", "", 0},
		{http.MethodPut, "/_faults", `{"latency_ms":250}`, 0},
		{http.MethodDelete, "/_faults", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target+" "+tt.body, func(t *testing.T) {
			// In a synctest bubble the clock is fake: time moves only when
			// every goroutine waits, so the delay is measured exactly.
			synctest.Test(t, func(t *testing.T) {
				p := fakeprovider.New()
				mustSetFaults(t, p, fakeprovider.Faults{LatencyMS: int(latency.Milliseconds())})
				req := httptest.NewRequestWithContext(t.Context(), tt.method, tt.target, strings.NewReader(tt.body))
				req.Header.Set("Idempotency-Key", "k")
				rec := httptest.NewRecorder()
				start := time.Now()

				p.ServeHTTP(rec, req)

				if d := time.Since(start); d != tt.wantDelay {
					t.Errorf("answered after %v, want %v", d, tt.wantDelay)
				}
				if rec.Body.Len() == 0 {
					t.Errorf("no answer written")
				}
			})
		})
	}
}

func TestLatency_HandlerReturnsAsSoonAsTheRequestContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := fakeprovider.New()
		mustSetFaults(t, p, fakeprovider.Faults{LatencyMS: int(fakeprovider.MaxLatency.Milliseconds())})
		ctx, cancel := context.WithCancel(t.Context())
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/charges", strings.NewReader(`{"amount":1000,"currency":"usd"}`))
		req.Header.Set("Idempotency-Key", "k")
		rec := httptest.NewRecorder()
		returned := make(chan time.Duration)
		start := time.Now()
		go func() {
			p.ServeHTTP(rec, req)
			returned <- time.Since(start)
		}()

		time.Sleep(time.Second)
		cancel()

		if d := <-returned; d != time.Second {
			t.Errorf("handler returned after %v, want 1s: when the context ended", d)
		}
		if rec.Body.Len() != 0 {
			t.Errorf("answer %q written to a client that had gone", rec.Body)
		}
		if n := len(p.ChargesByKey("k")); n != 1 {
			t.Errorf("ledger has %d charges for the key, want 1: the charge stands", n)
		}
	})
}

func TestLatency_ChargeStandsWhenTheClientGivesUp(t *testing.T) {
	recorded := make(chan struct{}, 1)
	p, srv := start(t, fakeprovider.WithChargeIDs(func() string {
		recorded <- struct{}{}
		return "ch_1"
	}))
	mustSetFaults(t, p, fakeprovider.Faults{LatencyMS: int(fakeprovider.MaxLatency.Milliseconds())})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/charges", strings.NewReader(`{"amount":1000,"currency":"usd","reference":"pay_k"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", "k")
	// The client gives up the moment the provider has charged, while the
	// provider is still sitting on its answer.
	go func() {
		<-recorded
		cancel()
	}()

	resp, err := srv.Client().Do(req)

	if err == nil {
		resp.Body.Close()
		t.Fatalf("request answered %s, want the client to have given up", resp.Status)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("request failed with %v, want context.Canceled", err)
	}
	if ledger := p.ChargesByKey("k"); len(ledger) != 1 || ledger[0].ID != "ch_1" {
		t.Fatalf("ledger for the key = %+v, want the charge ch_1 the client never heard of", ledger)
	}

	// Recovery, as a client would do it: the same key settles the question.
	p.ResetFaults()
	retry := postCharge(t, srv, "k", 1000)
	if ch := decode[fakeprovider.Charge](t, retry); retry.status != http.StatusCreated || ch.ID != "ch_1" {
		t.Errorf("retry = %d %s, want 201 with ch_1", retry.status, retry.body)
	}
}

func mustSetFaults(t *testing.T, p *fakeprovider.Provider, f fakeprovider.Faults) {
	t.Helper()
	if err := p.SetFaults(f); err != nil {
		t.Fatal(err)
	}
}

func TestLatency_StopDelayingSendsHeldAnswersAtOnce(t *testing.T) {
	recorded := make(chan struct{}, 1)
	p, srv := start(t, fakeprovider.WithChargeIDs(func() string {
		recorded <- struct{}{}
		return "ch_1"
	}))
	mustSetFaults(t, p, fakeprovider.Faults{LatencyMS: int(fakeprovider.MaxLatency.Milliseconds())})
	answered := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/charges", strings.NewReader(`{"amount":1000,"currency":"usd","reference":"pay_k"}`))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := srv.Client().Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	<-recorded // charged; the answer is now held for MaxLatency

	p.StopDelaying() // the server is shutting down

	select {
	case status := <-answered:
		if status != http.StatusCreated {
			t.Errorf("held answer = %d, want the 201", status)
		}
	case <-time.After(fakeprovider.MaxLatency / 2):
		t.Fatal("the answer is still held after StopDelaying")
	}
	// And nothing is delayed after it.
	if got := postCharge(t, srv, "k2", 1000); got.status != http.StatusCreated {
		t.Errorf("answer after StopDelaying = %d, want 201 at once", got.status)
	}
}
