package main

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// acks is what the service acknowledged to the load (2xx answers) over the
// whole game day: the audit checks each against Postgres, and the load
// draws its duplicates, refunds and reads from it.
type acks struct {
	mu       sync.Mutex
	payments map[string]ackedPayment // by payment id
	refunds  map[string]int64        // amount by refund id
	byKey    map[string]string       // payment id by the client's key
	idsOf    map[string][]string     // every payment id a key was answered with
	twice    []string                // keys answered with two different payments
	recent   []ackedPayment          // the newest creates, for duplicates and reads
	sent     map[string]int          // refunds sent per payment
	ok       []ackedPayment          // succeeded payments, for refunds
	refundOf map[string]int64        // succeeded refunds' total by payment id
	refunded []refundAck             // succeeded refunds, oldest first (the last 200)
}

// refundAck is a succeeded refund as its client saw it acknowledged: the
// payment's refunded total from then on is at least total.
type refundAck struct {
	paymentID string
	total     int64
	at        time.Time
}

type ackedPayment struct {
	id, key, body string
	amount        int64
	at            time.Time
}

func newAcks() *acks {
	return &acks{
		payments: map[string]ackedPayment{}, refunds: map[string]int64{},
		byKey: map[string]string{}, idsOf: map[string][]string{}, sent: map[string]int{}, refundOf: map[string]int64{},
	}
}

// payment records a 2xx answer to a create.
func (a *acks) payment(key, body string, amount int64, ans answer) {
	if ans.ID == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev, ok := a.byKey[key]; ok && prev != ans.ID {
		a.twice = append(a.twice, key)
	}
	if !slices.Contains(a.idsOf[key], ans.ID) {
		a.idsOf[key] = append(a.idsOf[key], ans.ID)
	}
	a.byKey[key] = ans.ID
	p := ackedPayment{id: ans.ID, key: key, body: body, amount: amount, at: time.Now()}
	if _, seen := a.payments[ans.ID]; !seen {
		a.recent = append(a.recent, p)
		if len(a.recent) > 200 {
			a.recent = a.recent[len(a.recent)-200:]
		}
		if ans.Status == "succeeded" {
			a.ok = append(a.ok, p)
		}
	}
	a.payments[ans.ID] = p
}

// refund records a 2xx answer to a refund.
func (a *acks) refund(paymentID string, amount int64, ans answer) {
	if ans.ID == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, seen := a.refunds[ans.ID]; !seen && ans.Status == "succeeded" {
		a.refundOf[paymentID] += amount
		a.refunded = append(a.refunded, refundAck{paymentID, a.refundOf[paymentID], time.Now()})
		if len(a.refunded) > 200 {
			a.refunded = a.refunded[len(a.refunded)-200:]
		}
	}
	a.refunds[ans.ID] = amount
}

// refundedBefore is the latest refund acknowledged before t: a read of its
// payment must show at least its total.
func (a *acks) refundedBefore(t time.Time) (refundAck, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.refunded) - 1; i >= 0; i-- {
		if a.refunded[i].at.Before(t) {
			return a.refunded[i], true
		}
	}
	return refundAck{}, false
}

// recentCreate draws one of the newest acknowledged creates.
func (a *acks) recentCreate() (ackedPayment, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.recent) == 0 {
		return ackedPayment{}, false
	}
	return a.recent[rand.IntN(len(a.recent))], true
}

// newest is the newest acknowledged payment, as a client reading back what
// it just wrote asks for, and when it was acknowledged.
func (a *acks) newest() (string, time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.recent) == 0 {
		return "", time.Time{}, false
	}
	p := a.recent[len(a.recent)-1]
	return p.id, p.at, true
}

// refundable draws a succeeded payment refunded fewer than 3 times (each
// refund takes a tenth: never above the payment).
func (a *acks) refundable() (ackedPayment, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for range 5 {
		if len(a.ok) == 0 {
			return ackedPayment{}, false
		}
		i := rand.IntN(len(a.ok))
		p := a.ok[i]
		if a.sent[p.id] < 3 {
			a.sent[p.id]++
			return p, true
		}
		a.ok[i] = a.ok[len(a.ok)-1]
		a.ok = a.ok[:len(a.ok)-1]
	}
	return ackedPayment{}, false
}

// paymentsOf are the payments a key's creates were answered with: one,
// unless the key was answered with two.
func (a *acks) paymentsOf(key string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.idsOf[key])
}

// snapshot copies what the audit needs.
func (a *acks) snapshot() (payments map[string]int64, refunds map[string]int64, twice []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	payments = make(map[string]int64, len(a.payments))
	for id, p := range a.payments {
		payments[id] = p.amount
	}
	refunds = make(map[string]int64, len(a.refunds))
	for id, amt := range a.refunds {
		refunds[id] = amt
	}
	return payments, refunds, append([]string(nil), a.twice...)
}
