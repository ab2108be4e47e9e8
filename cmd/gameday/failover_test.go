package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// TestWritesResumed_IsTheFirstChargedCreateSentAfterTheInstant checks the
// failover's measure: from the instant to the answer of the first new
// payment sent after it and charged; what was sent before does not count,
// nor do reads or replays, and never is a failed check.
func TestWritesResumed_IsTheFirstChargedCreateSentAfterTheInstant(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	x := &experiment{start: t0, samples: []sample{
		{Sent: at(900 * time.Millisecond), Latency: 2 * time.Second, Status: 201, Op: opCreate}, // sent before
		{Sent: at(1100 * time.Millisecond), Latency: 10 * time.Millisecond, Status: 200, Op: opGet},
		{Sent: at(1200 * time.Millisecond), Latency: 10 * time.Millisecond, Status: 201, Op: opDuplicate},
		{Sent: at(1300 * time.Millisecond), Latency: time.Second, Status: 503, Op: opCreate},
		{Sent: at(1500 * time.Millisecond), Latency: time.Second, Status: 201, Op: opCreate},    // answered at 2.5 s
		{Sent: at(2 * time.Second), Latency: 100 * time.Millisecond, Status: 201, Op: opCreate}, // answered at 2.1 s: first
	}}
	if c := writesResumed(x, time.Second, "after", 2*time.Second); !c.OK || c.Got != "1.1s" {
		t.Errorf("check %+v, want OK after 1.1s", c)
	}
	if c := writesResumed(x, time.Second, "after", time.Second); c.OK {
		t.Errorf("check %+v: 1.1s is over a bound of 1s", c)
	}
	if c := writesResumed(x, 3*time.Second, "after", time.Hour); c.OK || c.Got != "never" {
		t.Errorf("check %+v, want never", c)
	}
}

// TestRetriedAcrossChargedOnce_FailsOnAKeyWhosePaymentsWereChargedTwice
// checks the keys followed across the failover: a create that failed
// before it and was retried after it counts; one whose payments hold two
// charges between them fails.
func TestRetriedAcrossChargedOnce_FailsOnAKeyWhosePaymentsWereChargedTwice(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	acked := newAcks()
	acked.payment("k1", "{}", 100, answer{ID: "pay_1", Status: "succeeded"})
	acked.payment("k2", "{}", 100, answer{ID: "pay_2", Status: "succeeded"})
	x := &experiment{
		start: t0, faultEnd: time.Second, acks: acked,
		env: &Env{Provider: fakeprovider.New()},
		samples: []sample{
			{Sent: at(500 * time.Millisecond), Status: 0, Op: opCreate, Key: "k1"},
			{Sent: at(1500 * time.Millisecond), Status: http.StatusCreated, Op: opCreate, Key: "k1", Retry: true},
			{Sent: at(600 * time.Millisecond), Status: http.StatusServiceUnavailable, Op: opCreate, Key: "k2"},
			{Sent: at(1600 * time.Millisecond), Status: http.StatusCreated, Op: opCreate, Key: "k2", Retry: true},
			{Sent: at(700 * time.Millisecond), Status: http.StatusCreated, Op: opCreate, Key: "k3"}, // answered: not followed
		},
	}
	if c := retriedAcrossChargedOnce(x); !c.OK || c.Got != "0 of 2" {
		t.Errorf("check %+v, want OK, 0 of 2", c)
	}
	// k2 answered with a second payment: no harm while one of them is
	// charged, a double charge once both are.
	acked.payment("k2", "{}", 100, answer{ID: "pay_3", Status: "succeeded"})
	charge(t, x.env.Provider, "pay_2")
	if c := retriedAcrossChargedOnce(x); !c.OK {
		t.Errorf("check %+v with one of k2's payments charged, want OK", c)
	}
	charge(t, x.env.Provider, "pay_3")
	if c := retriedAcrossChargedOnce(x); c.OK || c.Got != "1 of 2" {
		t.Errorf("check %+v with both of k2's payments charged, want failed, 1 of 2", c)
	}
}

// charge makes the fake provider charge under a payment's id, as the
// service does.
func charge(t *testing.T, p *fakeprovider.Provider, paymentID string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/v1/charges", strings.NewReader(`{"amount":100,"currency":"usd","reference":"`+paymentID+`"}`))
	req.Header.Set("Idempotency-Key", paymentID)
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Fatalf("charge %s: %d %s", paymentID, rec.Code, rec.Body)
	}
}
