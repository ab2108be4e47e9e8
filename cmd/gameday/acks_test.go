package main

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAcks_RecordsAPaymentOnceHoweverOftenItIsAcknowledged checks that a
// replay of an acknowledged create (same key, same id) adds nothing: one
// payment, one recent create, no key charged twice.
func TestAcks_RecordsAPaymentOnceHoweverOftenItIsAcknowledged(t *testing.T) {
	a := newAcks()
	ans := answer{ID: "pay_1", Status: "succeeded"}
	for range 3 {
		a.payment("key-1", `{"amount":500}`, 500, ans)
	}
	a.payment("key-2", `{"amount":700}`, 700, answer{}) // a 2xx without an id: nothing to audit

	payments, refunds, twice := a.snapshot()
	if want := map[string]int64{"pay_1": 500}; !maps.Equal(payments, want) {
		t.Errorf("payments = %v, want %v", payments, want)
	}
	if len(refunds) != 0 || len(twice) != 0 {
		t.Errorf("refunds = %v, twice = %v; want none", refunds, twice)
	}
	if len(a.recent) != 1 || len(a.ok) != 1 {
		t.Errorf("%d recent creates, %d refundable; want 1 and 1", len(a.recent), len(a.ok))
	}
}

// TestAcks_ReportsAKeyAnsweredWithTwoPayments checks that a key answered
// with two different payment ids, a double charge, is reported by the
// snapshot, and that both payments are kept for the audit.
func TestAcks_ReportsAKeyAnsweredWithTwoPayments(t *testing.T) {
	a := newAcks()
	a.payment("key-1", "{}", 500, answer{ID: "pay_1", Status: "succeeded"})
	a.payment("key-2", "{}", 600, answer{ID: "pay_2", Status: "succeeded"})
	a.payment("key-1", "{}", 500, answer{ID: "pay_3", Status: "succeeded"})

	payments, _, twice := a.snapshot()
	if !slices.Equal(twice, []string{"key-1"}) {
		t.Errorf("twice = %v, want [key-1]", twice)
	}
	if want := map[string]int64{"pay_1": 500, "pay_2": 600, "pay_3": 500}; !maps.Equal(payments, want) {
		t.Errorf("payments = %v, want %v", payments, want)
	}
}

// TestAcks_SnapshotIsACopy checks that what the audit holds does not
// change under it as the load goes on.
func TestAcks_SnapshotIsACopy(t *testing.T) {
	a := newAcks()
	a.payment("key-1", "{}", 500, answer{ID: "pay_1"})
	a.payment("key-1", "{}", 500, answer{ID: "pay_2"})
	payments, refunds, twice := a.snapshot()
	payments["pay_9"], refunds["ref_9"], twice[0] = 1, 1, "changed"

	payments, refunds, twice = a.snapshot()
	if len(payments) != 2 || len(refunds) != 0 || twice[0] != "key-1" {
		t.Errorf("snapshot after changing an earlier one = %v, %v, %v", payments, refunds, twice)
	}
}

// TestAcks_RefundedBeforeIsTheLatestRefundAcknowledgedBeforeAnInstant
// checks what a read must show: the latest succeeded refund acknowledged
// strictly before the instant, with its payment's refunded total then. A
// refund acknowledged twice counts once; one not succeeded is kept for the
// audit but never read back.
func TestAcks_RefundedBeforeIsTheLatestRefundAcknowledgedBeforeAnInstant(t *testing.T) {
	a := newAcks()
	a.refund("pay_1", 100, answer{ID: "ref_1", Status: "succeeded"})
	a.refund("pay_1", 100, answer{ID: "ref_1", Status: "succeeded"}) // a replay
	a.refund("pay_1", 50, answer{ID: "ref_2", Status: "succeeded"})
	a.refund("pay_2", 70, answer{ID: "ref_3", Status: "failed"})
	a.refund("pay_2", 80, answer{}) // no id: nothing to audit
	a.refund("pay_3", 30, answer{ID: "ref_4", Status: "succeeded"})
	if len(a.refunded) != 3 {
		t.Fatalf("%d refunds to read back, want 3: %+v", len(a.refunded), a.refunded)
	}
	for i := range a.refunded { // acknowledged 1 s apart, from t0 + 1 s
		a.refunded[i].at = t0.Add(time.Duration(i+1) * time.Second)
	}

	tests := []struct {
		before    time.Duration // from t0
		paymentID string
		total     int64
		ok        bool
	}{
		{500 * time.Millisecond, "", 0, false},
		{time.Second, "", 0, false}, // acknowledged at that instant: not before it
		{1500 * time.Millisecond, "pay_1", 100, true},
		{2500 * time.Millisecond, "pay_1", 150, true},
		{time.Hour, "pay_3", 30, true},
	}
	for _, tt := range tests {
		r, ok := a.refundedBefore(t0.Add(tt.before))
		if ok != tt.ok || r.paymentID != tt.paymentID || r.total != tt.total {
			t.Errorf("refundedBefore(t0+%v) = %s %d, %v; want %s %d, %v",
				tt.before, r.paymentID, r.total, ok, tt.paymentID, tt.total, tt.ok)
		}
	}
	_, refunds, _ := a.snapshot()
	if want := map[string]int64{"ref_1": 100, "ref_2": 50, "ref_3": 70, "ref_4": 30}; !maps.Equal(refunds, want) {
		t.Errorf("refunds = %v, want %v", refunds, want)
	}
}

// TestAcks_RefundableNeverGivesAPaymentMoreThanThreeTimes checks that each
// succeeded payment is drawn for a refund exactly three times, however the
// draws fall, and that payments not succeeded are never drawn.
func TestAcks_RefundableNeverGivesAPaymentMoreThanThreeTimes(t *testing.T) {
	a := newAcks()
	const succeeded = 4
	for i := range succeeded {
		a.payment(fmt.Sprint("key-", i), "{}", 1000, answer{ID: fmt.Sprint("pay_", i), Status: "succeeded"})
	}
	a.payment("key-p", "{}", 1000, answer{ID: "pay_pending", Status: "pending"})

	drawn := map[string]int{}
	for range 100 {
		if p, ok := a.refundable(); ok {
			drawn[p.id]++
		}
	}
	for i := range succeeded {
		if id := fmt.Sprint("pay_", i); drawn[id] != 3 {
			t.Errorf("%s was drawn %d times, want 3", id, drawn[id])
		}
	}
	if n := drawn["pay_pending"]; n != 0 {
		t.Errorf("a pending payment was drawn %d times, want never", n)
	}
	if p, ok := a.refundable(); ok {
		t.Errorf("refundable() = %s, true once every payment had its refunds; want ok = false", p.id)
	}
}

// TestAcks_DrawsNothingBeforeTheFirstCreate checks that the load's sources
// of duplicates, reads and refunds say so when there is nothing to draw.
func TestAcks_DrawsNothingBeforeTheFirstCreate(t *testing.T) {
	a := newAcks()
	if p, ok := a.recentCreate(); ok {
		t.Errorf("recentCreate() = %+v, true; want ok = false", p)
	}
	if id, _, ok := a.newest(); ok {
		t.Errorf("newest() = %q, true; want ok = false", id)
	}
	if p, ok := a.refundable(); ok {
		t.Errorf("refundable() = %+v, true; want ok = false", p)
	}
}

// TestAcks_NewestIsTheLastNewPayment checks that newest is the payment
// created last, which a replay of an older one does not change, and that
// duplicates are drawn from the newest 200 creates only.
func TestAcks_NewestIsTheLastNewPayment(t *testing.T) {
	a := newAcks()
	const n = 250
	for i := range n {
		a.payment(fmt.Sprint("key-", i), fmt.Sprint("body-", i), int64(i), answer{ID: fmt.Sprint("pay_", i)})
	}
	a.payment("key-0", "body-0", 0, answer{ID: "pay_0"}) // a replay

	if id, at, ok := a.newest(); !ok || id != fmt.Sprint("pay_", n-1) || at.IsZero() {
		t.Errorf("newest() = %q, %v, %v; want pay_%d, a time, true", id, at, ok, n-1)
	}
	for range 1000 {
		p, ok := a.recentCreate()
		if !ok || p.amount < n-200 {
			t.Fatalf("recentCreate() = %+v, %v; want one of the newest 200", p, ok)
		}
		if p.key != fmt.Sprint("key-", p.amount) || p.body != fmt.Sprint("body-", p.amount) {
			t.Fatalf("recentCreate() = %+v: key and body are not the create's", p)
		}
	}
}

// TestAcks_IsSafeForConcurrentUse runs the load's calls from many
// goroutines at once (for the race detector) and checks that nothing is
// lost.
func TestAcks_IsSafeForConcurrentUse(t *testing.T) {
	a := newAcks()
	const workers, each = 8, 50
	var drawn atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("pay_%d_%d", w, i)
				a.payment("key-"+id, "{}", 1000, answer{ID: id, Status: "succeeded"})
				if p, ok := a.refundable(); ok {
					drawn.Add(1)
					a.refund(p.id, 100, answer{ID: "ref_" + id, Status: "succeeded"})
				}
				a.recentCreate()
				a.newest()
				a.refundedBefore(time.Now())
			}
		})
	}
	wg.Wait()
	payments, refunds, twice := a.snapshot()
	if len(payments) != workers*each || int64(len(refunds)) != drawn.Load() || len(twice) != 0 {
		t.Errorf("%d payments, %d refunds, %d keys twice; want %d, %d, 0",
			len(payments), len(refunds), len(twice), workers*each, drawn.Load())
	}
}
