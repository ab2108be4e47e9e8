package main

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// fire sends a payment request whose answer, if any, the test ignores:
// the server is about to be killed under it. An answer that did come
// would still be checked against the OpenAPI description.
func fire(t *testing.T, url, key string) {
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/payments", strings.NewReader(body1000))
	req.Header.Set("Authorization", "Bearer key_a")
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := apiClient(t).Do(req); err == nil {
		resp.Body.Close()
	}
}

// paymentStatus reads a payment's status for a key straight from Postgres.
func paymentStatus(t *testing.T, dbURL, key string) (id, status string) {
	t.Helper()
	pool, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	err = pool.QueryRowContext(context.Background(),
		`SELECT p.id, p.status FROM payments p JOIN idempotency_keys k ON k.kind = 'payment' AND k.resource_id = p.id
		WHERE k.scope = 'client_a' AND k.key = $1`, key).Scan(&id, &status)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return id, status
}

// retryUntilSettled retries a payment until it is no longer refused as in
// flight (the crashed request's lease must expire first).
func retryUntilSettled(t *testing.T, srv *instance, key string) response {
	t.Helper()
	var r response
	waitFor(t, "the lease to expire and the retry to settle", func() bool {
		r = pay(t, srv, "key_a", key, body1000)
		return r.status != 409
	})
	return r
}

// crashEnv is the stack's environment for crash tests: a short lease, so
// a retry can take over soon after the crash (and a request timeout short
// enough for it), and no reconciler, so that it is the retry that settles.
func crashEnv(st *stack) map[string]string {
	env := map[string]string{}
	for k, v := range st.env {
		env[k] = v
	}
	env["REQUEST_TIMEOUT"] = "1s"
	env["PROVIDER_TIMEOUT"] = "600ms"
	env["SETTLE_TIMEOUT"] = "200ms"
	env["IDEMPOTENCY_LEASE"] = "1500ms"
	env["RECONCILE_INTERVAL"] = "1h"
	env["RECONCILE_AFTER"] = "1h"
	env["RECONCILE_GRACE"] = "1h"
	return env
}

func TestCrash_KilledAfterTheChargeBeforeRecordingIt(t *testing.T) {
	bin := buildServer(t)
	st := newStack(t, nil)
	env := crashEnv(st)
	p1 := startProcess(t, bin, env)
	waitReady(t, p1.api)
	st.faults(t, fakeprovider.Faults{LatencyMS: 2000}) // the fake charges, then waits

	go fire(t, p1.api, "k") // dies with the server
	waitFor(t, "the provider to charge", func() bool { return len(st.fake.Charges()) == 1 })
	p1.kill(t)
	if _, status := paymentStatus(t, env["DATABASE_URL"], "k"); status != "processing" {
		t.Fatalf("after the crash the payment is %q, want processing (the charge was never recorded)", status)
	}

	st.fake.ResetFaults()
	p2 := startProcess(t, bin, env)
	waitReady(t, p2.api)
	r := retryUntilSettled(t, &instance{api: p2.api}, "k")
	charges := st.fake.Charges()
	if p := decodePayment(t, r); r.status != 201 || len(charges) != 1 || p.ProviderChargeID != charges[0].ID {
		t.Fatalf("retry after the crash: %d %s; charges %+v; want 201 with the one charge", r.status, r.body, charges)
	}
}

func TestCrash_KilledAfterRecordingThePaymentBeforeTheCharge(t *testing.T) {
	bin := buildServer(t)
	st := newStack(t, nil)
	env := crashEnv(st)
	// One provider worker, busy with a slow charge: the next payment is
	// written to Postgres, then waits in the bulkhead's queue.
	env["PROVIDER_BULKHEAD_CONCURRENCY"], env["PROVIDER_BULKHEAD_QUEUE"] = "1", "1"
	p1 := startProcess(t, bin, env)
	waitReady(t, p1.api)
	st.faults(t, fakeprovider.Faults{LatencyMS: 3000})

	go fire(t, p1.api, "busy")
	waitFor(t, "the first charge", func() bool { return len(st.fake.Charges()) == 1 })
	go fire(t, p1.api, "queued")
	var id string
	waitFor(t, "the queued payment's row", func() bool {
		id, _ = paymentStatus(t, env["DATABASE_URL"], "queued")
		return id != ""
	})
	waitFor(t, "the queued payment to wait in the bulkhead's queue", func() bool {
		return metricLine(t, p1.admin, `payservice_bulkhead_queue_depth{name="provider"}`) == `payservice_bulkhead_queue_depth{name="provider"} 1`
	})
	p1.kill(t)
	if n := len(st.fake.ChargesByKey(id)); n != 0 {
		t.Fatalf("the queued payment reached the provider before the crash (%d charges): the test did not set up its case", n)
	}

	st.fake.ResetFaults()
	p2 := startProcess(t, bin, env)
	waitReady(t, p2.api)
	r := retryUntilSettled(t, &instance{api: p2.api}, "queued")
	if p := decodePayment(t, r); r.status != 201 || p.ID != id {
		t.Fatalf("retry after the crash: %d %s; want 201 for payment %s", r.status, r.body, id)
	}
	if n := len(st.fake.ChargesByKey(id)); n != 1 {
		t.Errorf("%d charges for the resumed payment, want 1", n)
	}
	if r := retryUntilSettled(t, &instance{api: p2.api}, "busy"); r.status != 201 || len(st.fake.Charges()) != 2 {
		t.Errorf("the other payment: %d; %d charges in all, want 2", r.status, len(st.fake.Charges()))
	}
}
