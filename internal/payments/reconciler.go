package payments

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/payments/provider"
	"github.com/resiliencekit/payservice/internal/platform/config"
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
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

// Reconciler settles payments and refunds left processing: the provider's
// answer was lost (timeout, 5xx, a crash) and no retry came. It asks the
// provider for the charge or refund made with the resource's id as its
// idempotency key, and settles accordingly — or as failed when the
// provider confirms, after the grace period, that none exists.
//
// Every replica runs one; a Postgres advisory lock makes only one of them
// active at a time, and another takes over when it dies.
type Reconciler struct {
	svc    *Service
	cfg    ReconcilerConfig
	leader *postgres.Leader
	log    *slog.Logger

	isLeader prometheus.Gauge
	results  map[string]*prometheus.CounterVec // by kind
	// The work left processing, by kind, as the leader's last scan left
	// it; zero on the other replicas, so that max() is the leader's.
	backlog *prometheus.GaugeVec
	oldest  *prometheus.GaugeVec
}

// Reconciliation results, by what happened to stale work.
const (
	resultSucceeded = "succeeded" // the provider had done it
	resultFailed    = "failed"    // refused, or not done after the grace period
	resultPending   = "pending"   // not done yet, within the grace period
	resultSkipped   = "skipped"   // taken by a retry meanwhile
	resultError     = "error"     // the provider or database failed; next scan
)

// NewReconciler returns a reconciler for svc's payments and refunds.
func NewReconciler(svc *Service, cfg ReconcilerConfig, reg prometheus.Registerer) (*Reconciler, error) {
	if cfg.Every <= 0 || cfg.After <= 0 || cfg.Grace < cfg.After || cfg.Batch < 1 || cfg.Timeout <= 0 {
		return nil, fmt.Errorf("reconciler: invalid config %+v", cfg)
	}
	if cfg.Timeout+svc.SettleTimeout >= svc.Lease {
		return nil, fmt.Errorf("reconciler: timeout %s + settle timeout %s must be shorter than the lease %s", cfg.Timeout, svc.SettleTimeout, svc.Lease)
	}
	r := &Reconciler{
		svc: svc, cfg: cfg, leader: svc.Store.Leader(reconcilerLockID), log: svc.Log.With("component", "reconciler"),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "reconciler_leader",
			Help: "1 while this replica is the active reconciler.",
		}),
		results: map[string]*prometheus.CounterVec{
			KindPayment: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "reconciler_payments_total",
				Help: "Stale processing payments examined by the reconciler, by result.",
			}, []string{"result"}),
			KindRefund: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "reconciler_refunds_total",
				Help: "Stale processing refunds examined by the reconciler, by result.",
			}, []string{"result"}),
		},
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reconciler_backlog",
			Help: "Payments and refunds processing after the active reconciler's last scan, by kind; 0 on the other replicas.",
		}, []string{"kind"}),
		oldest: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "reconciler_oldest_seconds",
			Help: "Seconds since the last attempt of the oldest payment or refund processing after the active reconciler's last scan, by kind; 0 when none, and on the other replicas.",
		}, []string{"kind"}),
	}
	collectors := []prometheus.Collector{r.isLeader, r.backlog, r.oldest}
	for kind, results := range r.results {
		for _, res := range []string{resultSucceeded, resultFailed, resultPending, resultSkipped, resultError} {
			results.WithLabelValues(res)
		}
		r.backlog.WithLabelValues(kind)
		r.oldest.WithLabelValues(kind)
		collectors = append(collectors, results)
	}
	for _, c := range collectors {
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
		r.setLeading(false)
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

// RunOnce makes one scan of each kind of work if this replica leads, and
// returns how many it settled. The leader then measures what is left.
func (r *Reconciler) RunOnce(ctx context.Context) (settled int, err error) {
	leading, err := r.leader.Lead(ctx)
	r.setLeading(leading)
	if err != nil || !leading {
		return 0, err
	}
	defer r.measure(ctx) // what the scan leaves, however it ends
	for _, kind := range []string{KindPayment, KindRefund} {
		stale, err := r.svc.Store.Stale(ctx, kind, r.cfg.After, r.cfg.Batch)
		if err != nil {
			return settled, err
		}
		for i, c := range stale {
			if ctx.Err() != nil {
				return settled, nil //nolint:nilerr // stopping: every lookup would fail at once
			}
			// While the provider's breaker is open (or its bulkhead full),
			// every lookup would be refused: leave the rest to a later scan
			// instead of logging a refusal per key.
			if a, ok := r.svc.Provider.(Admitter); ok {
				if err := a.Admit(); err != nil {
					r.log.Info("reconciliation scan deferred", "reason", err, "left", len(stale)-i)
					return settled, nil
				}
			}
			result := r.reconcile(ctx, c)
			r.results[kind].WithLabelValues(result).Inc()
			if result == resultSucceeded || result == resultFailed {
				settled++
			}
		}
	}
	return settled, nil
}

// setLeading reports whether this replica leads. A replica that does not
// reports no backlog: only the leader measures it, and max() across
// replicas is then the leader's measure.
func (r *Reconciler) setLeading(leading bool) {
	if leading {
		r.isLeader.Set(1)
		return
	}
	r.isLeader.Set(0)
	for kind := range r.results {
		r.backlog.WithLabelValues(kind).Set(0)
		r.oldest.WithLabelValues(kind).Set(0)
	}
}

// measure reports the work of each kind left processing. A failure is
// only logged, the gauges keeping their last values: counting the backlog
// must not stop the scans that settle it.
func (r *Reconciler) measure(ctx context.Context) {
	if ctx.Err() != nil {
		return // stopping: Run resigns, and zeroes the gauges
	}
	for kind := range r.results {
		n, oldest, err := r.svc.Store.Backlog(ctx, kind)
		if err != nil {
			r.log.Warn("measure reconciliation backlog", "kind", kind, "err", err)
			continue
		}
		r.backlog.WithLabelValues(kind).Set(float64(n))
		r.oldest.WithLabelValues(kind).Set(oldest.Seconds())
	}
}

// verdict is what a lookup found: the final state to settle with, and
// whether it rests on an absence (nothing found), which only time makes
// final.
type verdict struct {
	found   bool
	unknown bool   // found, in a state this code does not know
	result  string // resultSucceeded or resultFailed, once settled
}

// reconcile settles one stale key, if the provider knows its outcome.
//
// Every step is bounded: the lease and the lookup by cfg.Timeout, the
// verdict's write by the service's SettleTimeout, both shorter together
// than the lease. And every write is fenced by the lease token, so that
// should a step outlast the lease anyway (a paused process), a retry that
// took the work over wins: the reconciler's settle then changes nothing.
func (r *Reconciler) reconcile(ctx context.Context, c idempotency.Claim) string {
	log := r.log.With("kind", c.Kind, "id", c.ResourceID)
	step, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	// The writes after the lookup run on a budget of their own: a lookup
	// cut short (by the timeout, or by shutdown) must still give the
	// lease back, or the work waits for it to expire. Deferring also
	// sends the key to the back of the queue.
	release := func() {
		record, cancel := r.svc.recordBudget(ctx)
		defer cancel()
		if err := r.svc.Store.Release(record, c, true); err != nil && !errors.Is(err, idempotency.ErrLeaseLost) {
			log.Warn("release lease", "err", err)
		}
	}
	// The lease keeps a client's retry from driving the work while we
	// decide its fate, and us from deciding while a retry drives it.
	if err := r.svc.Store.Take(step, &c); errors.Is(err, idempotency.ErrLeaseLost) {
		return resultSkipped
	} else if err != nil {
		// It may have taken the lease and lost only the answer: give it
		// back (fenced by our token, so a no-op if it did not).
		release()
		log.Warn("take lease", "err", err)
		return resultError
	}
	clock := startClock(c.At)
	call, cancelCall := r.svc.callBudget(step)
	var (
		settle func(context.Context, time.Duration) (*idempotency.Response, error)
		v      verdict
		err    error
	)
	switch c.Kind {
	case KindPayment:
		settle, v, err = r.payment(call, c, clock)
	case KindRefund:
		settle, v, err = r.refund(call, c, clock)
	default:
		err = fmt.Errorf("no reconciliation for kind %q", c.Kind)
	}
	cancelCall()
	switch {
	case err != nil:
		release()
		log.Warn("look up", "err", err)
		return resultError
	case v.unknown:
		release()
		log.Error("provider reports an unknown status")
		return resultError
	}
	// Not found: final only if no attempt was made within the grace
	// period, which the settle checks under the row lock. Checked here,
	// before it, an attempt made in between would go unseen.
	idleFor := time.Duration(0)
	if !v.found {
		idleFor = r.cfg.Grace
	}
	record, cancelRecord := r.svc.recordBudget(ctx)
	defer cancelRecord()
	stored, err := settle(record, idleFor)
	switch {
	case errors.Is(err, idempotency.ErrAttemptTooRecent):
		release()
		return resultPending
	case errors.Is(err, idempotency.ErrLeaseLost), err == nil && stored != nil:
		return resultSkipped // taken over, and perhaps settled, by a retry
	case err != nil:
		release()
		log.Warn("settle", "err", err)
		return resultError
	}
	log.Info("reconciled", "result", v.result)
	return v.result
}

// payment looks a stale payment's charge up, and returns how to settle it.
func (r *Reconciler) payment(ctx context.Context, c idempotency.Claim, clock dbClock) (func(context.Context, time.Duration) (*idempotency.Response, error), verdict, error) {
	p, err := r.svc.Store.PaymentByID(ctx, c.ResourceID)
	if err != nil {
		return nil, verdict{}, err
	}
	ch, found, err := r.svc.Provider.FindCharge(ctx, p.ID)
	if err != nil {
		return nil, verdict{}, err
	}
	v := verdict{found: found, result: resultFailed}
	switch {
	case found && ch.Status == provider.ChargeSucceeded:
		p.Status, p.ProviderChargeID = StatusSucceeded, ch.ID
		v.result = resultSucceeded
	case found && ch.Status == provider.ChargeDeclined:
		p.Status, p.ProviderChargeID, p.FailureCode = StatusFailed, ch.ID, ch.Code
	case found:
		return nil, verdict{found: true, unknown: true}, nil
	default:
		p.Status, p.FailureCode = StatusFailed, FailureNoCharge
	}
	p.UpdatedAt = clock.now()
	resp, err := r.svc.Views.Payment(p, "reconciler")
	if err != nil {
		return nil, verdict{}, err
	}
	resp.Final = true
	return func(ctx context.Context, idleFor time.Duration) (*idempotency.Response, error) {
		return r.svc.Store.SettlePayment(ctx, c, p, resp, idleFor)
	}, v, nil
}

// refund looks a stale refund up, and returns how to settle it.
func (r *Reconciler) refund(ctx context.Context, c idempotency.Claim, clock dbClock) (func(context.Context, time.Duration) (*idempotency.Response, error), verdict, error) {
	rf, err := r.svc.Store.RefundByID(ctx, c.ResourceID)
	if err != nil {
		return nil, verdict{}, err
	}
	found, ok, err := r.svc.Provider.FindRefund(ctx, rf.ID)
	if err != nil {
		return nil, verdict{}, err
	}
	v := verdict{found: ok, result: resultFailed}
	switch {
	case ok && found.Status == provider.RefundSucceeded:
		rf.Status, rf.ProviderRefundID = StatusSucceeded, found.ID
		v.result = resultSucceeded
	case ok:
		return nil, verdict{found: true, unknown: true}, nil
	default:
		// The provider has no refund: it never arrived, or was refused
		// (a refusal makes no refund). Either way nothing was given back.
		rf.Status, rf.FailureCode = StatusFailed, FailureNoRefund
	}
	rf.UpdatedAt = clock.now()
	resp, err := r.svc.Views.Refund(rf, "reconciler")
	if err != nil {
		return nil, verdict{}, err
	}
	resp.Final = true
	return func(ctx context.Context, idleFor time.Duration) (*idempotency.Response, error) {
		return r.svc.Store.SettleRefund(ctx, c, rf, resp, idleFor)
	}, v, nil
}

// Failure codes of work the provider never did: its request was lost
// before reaching it (or, for a refund, refused).
const (
	FailureNoCharge = "no_charge"
	FailureNoRefund = "no_refund"
)
