// Package paymentsaudit checks the money after the fact: it compares what
// the service's Postgres says with the provider's ledger and with what the
// service acknowledged to its clients. It is how the soak test and the game
// day prove the at-most-once promise under faults: every charge and refund
// the provider made belongs to exactly one payment or refund, each
// succeeded payment and refund was charged or refunded exactly once, no
// payment is refunded above its amount, and every 2xx answer is in
// Postgres with the amount answered.
package paymentsaudit

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// Acknowledged is what the service answered 2xx to: amounts by payment id
// and by refund id.
type Acknowledged struct {
	Payments map[string]int64
	Refunds  map[string]int64
}

// Findings is the audit's result. The counts describe the ledger; each
// slice lists the violations of one invariant, empty when it holds.
type Findings struct {
	Payments, Succeeded, Failed, Processing int // rows, and by status
	Refunds, RefundsSucceeded               int
	Charges, ProviderRefunds                int // the provider's succeeded charges and its refunds

	// ChargedTwice lists client idempotency keys (scope/key) whose payment
	// the provider charged more than once. A key names one payment (the
	// primary key of its record), so this is the provider's side; that a
	// client never got two payments for one key is the caller's to check
	// from its answers.
	ChargedTwice []string
	// Unbalanced lists the mismatches between the provider's ledger and
	// Postgres: a charge or refund with no row (lost money), a succeeded
	// row with no charge or refund, or one whose amount or id differs.
	Unbalanced []string
	// Missing lists acknowledged payments and refunds not in Postgres as
	// answered: a 2xx the database lost.
	Missing []string
	// OverRefunded lists payments refunded above their amount, or whose
	// refunded total disagrees with their succeeded refunds or with the
	// provider's, or with an amount still reserved for a refund.
	OverRefunded []string
	// Unsettled lists payments and refunds still processing.
	Unsettled []string
}

// Problems returns one line per broken invariant, naming the first few
// culprits; none when the money is right.
func (f Findings) Problems() []string {
	var out []string
	add := func(what string, ids []string) {
		if len(ids) > 0 {
			shown := ids[:min(len(ids), 5)]
			out = append(out, fmt.Sprintf("%s: %d (%v)", what, len(ids), shown))
		}
	}
	add("keys charged twice", f.ChargedTwice)
	add("provider ledger and Postgres disagree", f.Unbalanced)
	add("acknowledged but missing from Postgres", f.Missing)
	add("refunds wrong for their payment", f.OverRefunded)
	add("left processing", f.Unsettled)
	return out
}

// WaitSettled waits until no payment or refund is processing (the
// reconciler has settled what requests left unknown), or ctx ends.
func WaitSettled(ctx context.Context, db *sql.DB) (int, error) {
	for {
		var n int
		err := db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM payments WHERE status = 'processing') +
			(SELECT count(*) FROM refunds WHERE status = 'processing')`).Scan(&n)
		if err == nil && n == 0 {
			return 0, nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return n, fmt.Errorf("count processing: %w", err)
			}
			return n, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type payment struct {
	key, status, chargeID     string
	amount, refunded, pending int64
	refundRows                int64 // the sum of its succeeded refunds' rows
}

type refund struct {
	status, providerID string
	amount             int64
}

// Audit reads every payment and refund and checks them against the
// provider's ledger and the acknowledged answers.
func Audit(ctx context.Context, db *sql.DB, charges []fakeprovider.Charge, providerRefunds []fakeprovider.Refund, acked Acknowledged) (Findings, error) {
	payments, err := readPayments(ctx, db)
	if err != nil {
		return Findings{}, err
	}
	refunds, err := readRefunds(ctx, db)
	if err != nil {
		return Findings{}, err
	}
	var f Findings
	f.Payments, f.Refunds = len(payments), len(refunds)
	f.Charges, f.ProviderRefunds = 0, len(providerRefunds)
	for id, p := range payments {
		switch p.status {
		case "succeeded":
			f.Succeeded++
		case "failed":
			f.Failed++
		case "processing":
			f.Processing++
			f.Unsettled = append(f.Unsettled, id)
		}
	}
	for id, r := range refunds {
		switch r.status {
		case "succeeded":
			f.RefundsSucceeded++
		case "processing":
			f.Unsettled = append(f.Unsettled, id)
		}
	}

	charged := map[string]bool{} // payment ids with a succeeded charge
	chargesByKey := map[string]int{}
	for _, ch := range charges {
		p, ok := payments[ch.IdempotencyKey] // the service charges under the payment's id
		if !ok {
			f.Unbalanced = append(f.Unbalanced, "charge "+ch.ID+" has no payment")
			continue
		}
		if ch.Status == fakeprovider.StatusSucceeded && p.key != "" {
			chargesByKey[p.key]++
		}
		if ch.Status != fakeprovider.StatusSucceeded {
			if p.status == "succeeded" {
				f.Unbalanced = append(f.Unbalanced, fmt.Sprintf("charge %s was declined but payment %s succeeded", ch.ID, ch.IdempotencyKey))
			}
			continue
		}
		f.Charges++
		charged[ch.IdempotencyKey] = true
		if p.status != "succeeded" || p.chargeID != ch.ID || p.amount != ch.Amount {
			f.Unbalanced = append(f.Unbalanced, fmt.Sprintf("charge %s of %d: payment %s is %s, charge %q, amount %d",
				ch.ID, ch.Amount, ch.IdempotencyKey, p.status, p.chargeID, p.amount))
		}
	}
	for key, n := range chargesByKey {
		if n > 1 {
			f.ChargedTwice = append(f.ChargedTwice, key)
		}
	}
	for id, p := range payments {
		if p.status == "succeeded" && !charged[id] {
			f.Unbalanced = append(f.Unbalanced, "payment "+id+" succeeded without a charge")
		}
	}

	refundedByCharge := map[string]int64{}
	refundedIDs := map[string]bool{}
	for _, pr := range providerRefunds {
		refundedByCharge[pr.Charge] += pr.Amount
		r, ok := refunds[pr.IdempotencyKey]
		switch {
		case !ok:
			f.Unbalanced = append(f.Unbalanced, "provider refund "+pr.ID+" has no refund")
		case r.status != "succeeded" || r.providerID != pr.ID || r.amount != pr.Amount:
			f.Unbalanced = append(f.Unbalanced, fmt.Sprintf("provider refund %s of %d: refund %s is %s, id %q, amount %d",
				pr.ID, pr.Amount, pr.IdempotencyKey, r.status, r.providerID, r.amount))
		}
		refundedIDs[pr.IdempotencyKey] = true
	}
	for id, r := range refunds {
		if r.status == "succeeded" && !refundedIDs[id] {
			f.Unbalanced = append(f.Unbalanced, "refund "+id+" succeeded without a provider refund")
		}
	}
	for id, p := range payments {
		if p.refunded > p.amount || p.pending != 0 || p.refunded != p.refundRows ||
			(p.chargeID != "" && refundedByCharge[p.chargeID] != p.refunded) {
			f.OverRefunded = append(f.OverRefunded, fmt.Sprintf(
				"payment %s of %d: refunded %d, pending %d, its succeeded refunds sum to %d, the provider refunded %d",
				id, p.amount, p.refunded, p.pending, p.refundRows, refundedByCharge[p.chargeID]))
		}
	}

	for id, amount := range acked.Payments {
		if p, ok := payments[id]; !ok || p.amount != amount {
			f.Missing = append(f.Missing, "payment "+id)
		}
	}
	for id, amount := range acked.Refunds {
		if r, ok := refunds[id]; !ok || r.amount != amount {
			f.Missing = append(f.Missing, "refund "+id)
		}
	}
	for _, s := range [][]string{f.ChargedTwice, f.Unbalanced, f.Missing, f.OverRefunded, f.Unsettled} {
		sort.Strings(s)
	}
	return f, nil
}

func readPayments(ctx context.Context, db *sql.DB) (map[string]payment, error) {
	rows, err := db.QueryContext(ctx, `SELECT p.id, coalesce(k.scope || '/' || k.key, ''), p.status, coalesce(p.provider_charge_id, ''),
			p.amount, p.amount_refunded, p.amount_refund_pending,
			coalesce((SELECT sum(r.amount) FROM refunds r WHERE r.payment_id = p.id AND r.status = 'succeeded'), 0)
		FROM payments p LEFT JOIN idempotency_keys k ON k.kind = 'payment' AND k.resource_id = p.id`)
	if err != nil {
		return nil, fmt.Errorf("read payments: %w", err)
	}
	defer rows.Close()
	out := map[string]payment{}
	for rows.Next() {
		var id string
		var p payment
		if err := rows.Scan(&id, &p.key, &p.status, &p.chargeID, &p.amount, &p.refunded, &p.pending, &p.refundRows); err != nil {
			return nil, fmt.Errorf("read payments: %w", err)
		}
		out[id] = p
	}
	return out, rows.Err()
}

func readRefunds(ctx context.Context, db *sql.DB) (map[string]refund, error) {
	rows, err := db.QueryContext(ctx, `SELECT id, status, coalesce(provider_refund_id, ''), amount FROM refunds`)
	if err != nil {
		return nil, fmt.Errorf("read refunds: %w", err)
	}
	defer rows.Close()
	out := map[string]refund{}
	for rows.Next() {
		var id string
		var r refund
		if err := rows.Scan(&id, &r.status, &r.providerID, &r.amount); err != nil {
			return nil, fmt.Errorf("read refunds: %w", err)
		}
		out[id] = r
	}
	return out, rows.Err()
}
