package paymentsaudit_test

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/paymentsaudit"
	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// ledger is a consistent state: two payments charged, one refunded in
// part, one failed without a charge; and the provider's matching ledger.
func ledger(t *testing.T) (*sql.DB, []fakeprovider.Charge, []fakeprovider.Refund, paymentsaudit.Acknowledged) {
	t.Helper()
	db, err := sql.Open("postgres", testenv.NewDatabase(t, idempotency.Migrations, paymentsdb.Migrations))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{
		`INSERT INTO payments (id, client_id, amount, currency, status, provider_charge_id, amount_refunded)
		 VALUES ('pay_1', 'c', 1000, 'usd', 'succeeded', 'ch_1', 300),
		        ('pay_2', 'c', 2000, 'usd', 'succeeded', 'ch_2', 0),
		        ('pay_3', 'c', 3000, 'usd', 'failed', NULL, 0)`,
		`INSERT INTO idempotency_keys (scope, key, fingerprint, kind, resource_id)
		 VALUES ('c', 'k1', 'f', 'payment', 'pay_1'), ('c', 'k2', 'f', 'payment', 'pay_2'),
		        ('c', 'k3', 'f', 'payment', 'pay_3'), ('c', 'r1', 'f', 'refund', 're_1')`,
		`INSERT INTO refunds (id, payment_id, client_id, amount, status, provider_refund_id)
		 VALUES ('re_1', 'pay_1', 'c', 300, 'succeeded', 'rf_1')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	charges := []fakeprovider.Charge{
		{ID: "ch_1", Status: fakeprovider.StatusSucceeded, Amount: 1000, IdempotencyKey: "pay_1"},
		{ID: "ch_2", Status: fakeprovider.StatusSucceeded, Amount: 2000, IdempotencyKey: "pay_2"},
	}
	refunds := []fakeprovider.Refund{{ID: "rf_1", Status: fakeprovider.StatusSucceeded, Charge: "ch_1", Amount: 300, IdempotencyKey: "re_1"}}
	acked := paymentsaudit.Acknowledged{
		Payments: map[string]int64{"pay_1": 1000, "pay_2": 2000},
		Refunds:  map[string]int64{"re_1": 300},
	}
	return db, charges, refunds, acked
}

// Each invariant fails on the state that breaks it.
func TestAudit_FindsEachBrokenInvariant(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(db *sql.DB, charges *[]fakeprovider.Charge, refunds *[]fakeprovider.Refund, acked *paymentsaudit.Acknowledged) error
		want    string // the problem's start; "" when the money is right
	}{
		{"a consistent ledger", nil, ""},
		{"a charge with no payment", func(_ *sql.DB, c *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			*c = append(*c, fakeprovider.Charge{ID: "ch_9", Status: fakeprovider.StatusSucceeded, Amount: 5, IdempotencyKey: "pay_9"})
			return nil
		}, "provider ledger and Postgres disagree"},
		{"a failed payment the provider charged", func(db *sql.DB, c *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			*c = append(*c, fakeprovider.Charge{ID: "ch_3", Status: fakeprovider.StatusSucceeded, Amount: 3000, IdempotencyKey: "pay_3"})
			return nil
		}, "provider ledger and Postgres disagree"},
		{"a succeeded payment without a charge", func(_ *sql.DB, c *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			*c = (*c)[:1]
			return nil
		}, "provider ledger and Postgres disagree"},
		{"an acknowledged payment Postgres lost", func(_ *sql.DB, _ *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, a *paymentsaudit.Acknowledged) error {
			a.Payments["pay_7"] = 700
			return nil
		}, "acknowledged but missing from Postgres"},
		{"an acknowledged amount Postgres changed", func(_ *sql.DB, _ *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, a *paymentsaudit.Acknowledged) error {
			a.Payments["pay_2"] = 2001
			return nil
		}, "acknowledged but missing from Postgres"},
		{"a refund the provider made that Postgres does not count", func(_ *sql.DB, _ *[]fakeprovider.Charge, r *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			*r = append(*r, fakeprovider.Refund{ID: "rf_2", Status: fakeprovider.StatusSucceeded, Charge: "ch_2", Amount: 50, IdempotencyKey: "re_2"})
			return nil
		}, "provider ledger and Postgres disagree"},
		{"a payment left processing", func(db *sql.DB, _ *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			_, err := db.Exec(`UPDATE payments SET status = 'processing' WHERE id = 'pay_3'`)
			return err
		}, "left processing"},
		{"one payment charged twice", func(_ *sql.DB, c *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			*c = append(*c, fakeprovider.Charge{ID: "ch_1b", Status: fakeprovider.StatusSucceeded, Amount: 1000, IdempotencyKey: "pay_1"})
			return nil
		}, "keys charged twice"},
		{"a declined charge whose payment succeeded", func(db *sql.DB, c *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			(*c)[1].Status = fakeprovider.StatusDeclined
			return nil
		}, "provider ledger and Postgres disagree"},
		{"an amount left reserved for a refund", func(db *sql.DB, _ *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			_, err := db.Exec(`UPDATE payments SET amount_refund_pending = 50 WHERE id = 'pay_2'`)
			return err
		}, "refunds wrong for their payment"},
		{"a payment refunded above what its refunds say", func(db *sql.DB, _ *[]fakeprovider.Charge, _ *[]fakeprovider.Refund, _ *paymentsaudit.Acknowledged) error {
			_, err := db.Exec(`UPDATE payments SET amount_refunded = 400 WHERE id = 'pay_1'`)
			return err
		}, "refunds wrong for their payment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, charges, refunds, acked := ledger(t)
			if tt.breakIt != nil {
				if err := tt.breakIt(db, &charges, &refunds, &acked); err != nil {
					t.Fatal(err)
				}
			}
			f, err := paymentsaudit.Audit(context.Background(), db, charges, refunds, acked)
			if err != nil {
				t.Fatal(err)
			}
			problems := f.Problems()
			if tt.want == "" {
				if len(problems) != 0 {
					t.Errorf("problems %q in a consistent ledger", problems)
				}
				return
			}
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, tt.want) }) {
				t.Errorf("problems %q; want one starting %q", problems, tt.want)
			}
		})
	}
}

// WaitSettled returns once nothing is processing, and reports what is left
// when its context ends first.
func TestWaitSettled(t *testing.T) {
	db, _, _, _ := ledger(t)
	if left, err := paymentsaudit.WaitSettled(context.Background(), db); err != nil || left != 0 {
		t.Errorf("nothing processing: WaitSettled = %d, %v; want 0, nil", left, err)
	}
	if _, err := db.Exec(`UPDATE refunds SET status = 'processing'`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if left, err := paymentsaudit.WaitSettled(ctx, db); err != nil || left != 1 {
		t.Errorf("a refund processing: WaitSettled = %d, %v; want 1 left, nil", left, err)
	}
}
