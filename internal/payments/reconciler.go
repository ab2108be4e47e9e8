package payments

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments/paymentsdb"
	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

// reconcilerLockID is the advisory lock key that elects the reconciler's
// leader (the FNV-1a 32-bit hash of "payservice-reconciler").
const reconcilerLockID int64 = 0x6d061279

// ReconcilerConfig tunes a Reconciler.
type ReconcilerConfig struct {
	// Every is how often the leader scans for stale payments.
	Every time.Duration
	// After is how long after its last charge attempt a processing
	// payment counts as stale: longer than any request's deadline, so the
	// reconciler does not race the request still settling it.
	After time.Duration
	// Grace is how long after its last charge attempt a payment the
	// provider has no charge for is declared failed. A charge request can
	// linger in networks and queues; only after this long does "no such
	// charge" mean "never charged".
	Grace time.Duration
	// Batch bounds the payments settled per scan.
	Batch int
	// Timeout bounds the reconciliation of one payment: taking its lease
	// and looking its charge up, retries included. Recording the verdict
	// then has the service's SettleTimeout. Together they must be shorter
	// than the lease, so that the reconciler never acts on a payment it
	// no longer holds (its writes are fenced besides).
	Timeout time.Duration
}

// DefaultReconcilerConfig scans every 30 seconds for payments whose last
// charge attempt is a minute old, and fails one the provider has no charge
// for only after five minutes.
func DefaultReconcilerConfig() ReconcilerConfig {
	return ReconcilerConfig{Every: 30 * time.Second, After: time.Minute, Grace: 5 * time.Minute, Batch: 100}
}

// Bind declares INTERVAL, AFTER, GRACE and BATCH after b's prefix
// (RECONCILE_). The timeout is the wiring's: a request's.
func (c *ReconcilerConfig) Bind(b *config.Binder) {
	b.Duration("INTERVAL", &c.Every, "how often the active reconciler scans for payments left processing")
	b.Duration("AFTER", &c.After, "age of a processing payment's last charge attempt before the reconciler looks it up; longer than REQUEST_TIMEOUT + SETTLE_TIMEOUT")
	b.Duration("GRACE", &c.Grace, "age after which a payment the provider has no charge for is failed; at least RECONCILE_AFTER")
	b.Int("BATCH", &c.Batch, 1, 10000, "payments reconciled per scan")
}

// Reconciler settles payments left processing: the provider's answer was
// lost (timeout, 5xx, a crash) and no retry came. It asks the provider for
// the charge made with the payment's idempotency key, and settles the
// payment as succeeded or declined accordingly — or as failed when the
// provider confirms, after the grace period, that no charge exists.
//
// Every replica runs one; a Postgres advisory lock makes only one of them
// active at a time, and another takes over when it dies.
type Reconciler struct {
	svc    *Service
	cfg    ReconcilerConfig
	leader *postgres.Leader
	log    *slog.Logger

	isLeader prometheus.Gauge
	results  *prometheus.CounterVec
}

// Reconciliation results, by what happened to a stale payment.
const (
	resultSucceeded = "succeeded" // the provider had charged it
	resultFailed    = "failed"    // declined, or no charge after the grace period
	resultPending   = "pending"   // no charge yet, within the grace period
	resultSkipped   = "skipped"   // taken by a retry meanwhile
	resultError     = "error"     // the provider or database failed; next scan
)

// NewReconciler returns a reconciler for svc's payments.
func NewReconciler(svc *Service, cfg ReconcilerConfig, reg prometheus.Registerer) (*Reconciler, error) {
	if cfg.Every <= 0 || cfg.After <= 0 || cfg.Grace < cfg.After || cfg.Batch < 1 || cfg.Timeout <= 0 {
		return nil, fmt.Errorf("reconciler: invalid config %+v", cfg)
	}
	if cfg.Timeout+svc.SettleTimeout >= svc.Lease {
		return nil, fmt.Errorf("reconciler: timeout %s + settle timeout %s must be shorter than the lease %s", cfg.Timeout, svc.SettleTimeout, svc.Lease)
	}
	r := &Reconciler{
		svc: svc, cfg: cfg, leader: svc.Repo.Leader(reconcilerLockID), log: svc.Log.With("component", "reconciler"),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reconciler_leader",
			Help: "1 while this replica is the active reconciler.",
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "reconciler_payments_total",
			Help: "Stale processing payments examined by the reconciler, by result.",
		}, []string{"result"}),
	}
	for _, res := range []string{resultSucceeded, resultFailed, resultPending, resultSkipped, resultError} {
		r.results.WithLabelValues(res)
	}
	for _, c := range []prometheus.Collector{r.isLeader, r.results} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("reconciler metrics: %w", err)
		}
	}
	return r, nil
}

// resignTimeout bounds giving up the leadership when Run ends.
const resignTimeout = 2 * time.Second

// Run scans every cfg.Every until ctx ends, then resigns the leadership.
func (r *Reconciler) Run(ctx context.Context) {
	defer func() {
		// Resigning frees the lock for another replica at once; bounded,
		// so a hung database cannot hold up shutdown. If it fails, the
		// lock goes when this process's session ends.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resignTimeout)
		defer cancel()
		if err := r.leader.Resign(ctx); err != nil {
			r.log.Warn("resign reconciler leadership", "err", err)
		}
		r.isLeader.Set(0)
	}()
	ticker := time.NewTicker(r.cfg.Every)
	defer ticker.Stop()
	for {
		if _, err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("reconciliation scan failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// RunOnce makes one scan if this replica leads, and returns how many
// payments it settled.
func (r *Reconciler) RunOnce(ctx context.Context) (settled int, err error) {
	leading, err := r.leader.Lead(ctx)
	if leading {
		r.isLeader.Set(1)
	} else {
		r.isLeader.Set(0)
	}
	if err != nil || !leading {
		return 0, err
	}
	stale, err := r.svc.Repo.Stale(ctx, r.cfg.After, r.cfg.Batch)
	if err != nil {
		return 0, err
	}
	for i, p := range stale {
		if ctx.Err() != nil {
			break // stopping: every lookup would fail at once
		}
		// While the provider's breaker is open (or its bulkhead full),
		// every lookup would be refused: leave the rest to a later scan
		// instead of logging a refusal per payment.
		if a, ok := r.svc.Provider.(Admitter); ok {
			if err := a.Admit(); err != nil {
				r.log.Info("reconciliation scan deferred", "reason", err, "left", len(stale)-i)
				break
			}
		}
		result := r.reconcile(ctx, p)
		r.results.WithLabelValues(result).Inc()
		if result == resultSucceeded || result == resultFailed {
			settled++
		}
	}
	return settled, nil
}

// reconcile settles one stale payment, if the provider knows its outcome.
//
// Every step is bounded: the lease and the lookup by cfg.Timeout, the
// verdict's write by the service's SettleTimeout, both shorter together
// than the lease. And every write is fenced by the lease token, so that
// should a step outlast the lease anyway (a paused process), a retry that
// took the payment over wins: the reconciler's Settle then changes nothing.
func (r *Reconciler) reconcile(ctx context.Context, p paymentsdb.Payment) string {
	log := r.log.With("payment_id", p.ID)
	token := newToken()
	step, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	// The lease keeps a client's retry from driving the payment while we
	// decide its fate, and us from deciding while a retry drives it.
	// The writes after the lookup run on a budget of their own: a
	// lookup cut short (by the timeout, or by shutdown) must still give
	// the lease back, or the payment waits for it to expire. Deferring
	// also sends the payment to the back of the queue.
	release := func() {
		record, cancel := r.svc.recordBudget(ctx)
		defer cancel()
		if err := r.svc.Repo.Defer(record, p.ID, token); err != nil && !errors.Is(err, paymentsdb.ErrLeaseLost) {
			log.Warn("release lease", "err", err)
		}
	}
	if err := r.svc.Repo.TakeLease(step, p.ID, token, r.svc.Lease); errors.Is(err, paymentsdb.ErrLeaseLost) {
		return resultSkipped
	} else if err != nil {
		// It may have taken the lease and lost only the answer: give it
		// back (fenced by our token, so a no-op if it did not).
		release()
		log.Warn("take lease", "err", err)
		return resultError
	}

	call, cancelCall := r.svc.callBudget(step)
	ch, found, err := r.svc.Provider.FindCharge(call, p.ID)
	cancelCall()
	if err != nil {
		release()
		log.Warn("look up charge", "err", err)
		return resultError
	}
	var s paymentsdb.Settlement
	switch {
	case found && ch.Status == provider.ChargeSucceeded:
		s = paymentsdb.Settlement{Status: paymentsdb.StatusSucceeded, ProviderChargeID: ch.ID}
	case found && ch.Status == provider.ChargeDeclined:
		s = paymentsdb.Settlement{Status: paymentsdb.StatusFailed, ProviderChargeID: ch.ID, FailureCode: ch.Code}
	case found:
		release()
		log.Error("provider reports an unknown charge status", "status", ch.Status)
		return resultError
	default:
		// No charge: final only if no attempt was made within the grace
		// period, which Settle checks under the row lock. Checked here,
		// before it, an attempt made in between would go unseen.
		s = paymentsdb.Settlement{Status: paymentsdb.StatusFailed, FailureCode: FailureNoCharge, UnchargedFor: r.cfg.Grace}
	}
	record, cancelRecord := r.svc.recordBudget(ctx)
	defer cancelRecord()
	settled, now, err := r.svc.Repo.Settle(record, p.ID, token, s, r.svc.respond("reconciler"))
	switch {
	case errors.Is(err, paymentsdb.ErrAttemptTooRecent):
		release()
		return resultPending
	case errors.Is(err, paymentsdb.ErrLeaseLost), err == nil && !now:
		return resultSkipped // taken over, and perhaps settled, by a retry
	case err != nil:
		release()
		log.Warn("settle", "err", err)
		return resultError
	}
	log.Info("reconciled payment", "status", settled.Status, "provider_charge_id", settled.ProviderChargeID)
	if settled.Status == paymentsdb.StatusSucceeded {
		return resultSucceeded
	}
	return resultFailed
}

// FailureNoCharge is the failure code of a payment the provider never
// charged: its charge request was lost before reaching it.
const FailureNoCharge = "no_charge"
