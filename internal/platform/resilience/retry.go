package resilience

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RetrySettings bound how a Retrier retries.
type RetrySettings struct {
	Name        string        // the dependency; a metric label
	MaxAttempts int           // attempts per call, the first included
	BaseDelay   time.Duration // backoff before the first retry, before jitter
	MaxDelay    time.Duration // cap on the backoff, before jitter
	// MaxRetryAfter caps how long a dependency's Retry-After may make
	// us wait; past it the call gives up instead.
	MaxRetryAfter time.Duration
	// AttemptTimeout is how long one attempt may take. No attempt, the
	// first included, is started unless this much time is left before the
	// call's deadline: an attempt cut short by the deadline is wasted
	// load, for a write that is not idempotent it is one more unknown
	// outcome, and a circuit
	// breaker cannot count it (it ended with the caller's context, not its
	// own timeout), so a dependency that hangs would never trip it.
	AttemptTimeout time.Duration
}

// ErrDeadlineTooClose means Retrier.Do gave up before the first attempt:
// less than the attempt timeout was left before the call's deadline, so
// nothing was sent.
var ErrDeadlineTooClose = errors.New("too little time left before the deadline for an attempt")

// Verdict is a classifier's judgement of a failed attempt.
type Verdict struct {
	Retry bool
	// After is the dependency's own Retry-After hint, or 0.
	After time.Duration
}

// Retrier retries failed calls with capped exponential backoff and full
// jitter: before retry n it sleeps a uniformly random time in
// [0, min(MaxDelay, BaseDelay·2^n)). Jitter spreads the retries of many
// callers that failed together, so they do not hit a recovering dependency
// in synchronised waves (see the AWS Architecture Blog, "Exponential
// Backoff And Jitter").
//
// Every retry also needs a token from a RetryBudget shared by all callers
// of the dependency. Without one, a dependency that fails outright gets
// MaxAttempts times its normal load from us, exactly when it can least
// take it.
type Retrier struct {
	policy   RetrySettings
	budget   *RetryBudget
	classify func(error) Verdict
	random   func() float64 // in [0, 1): jitter
	attempts *prometheus.CounterVec
}

// NewRetrier returns a retrier for the named dependency. classify decides
// which errors are worth another attempt; errors matching ErrBreakerOpen
// or ErrBulkheadFull never are, whatever it says: they mean "not now", and
// retrying them is how overload spreads.
func NewRetrier(p RetrySettings, budget *RetryBudget, classify func(error) Verdict, reg prometheus.Registerer) (*Retrier, error) {
	name := p.Name
	if p.MaxAttempts < 1 || p.BaseDelay <= 0 || p.MaxDelay < p.BaseDelay || p.AttemptTimeout <= 0 || p.MaxRetryAfter < 0 {
		return nil, fmt.Errorf("retrier %s: invalid policy %+v", name, p)
	}
	r := &Retrier{
		policy: p, budget: budget, classify: classify, random: rand.Float64,
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "retry_attempts_total",
			Help:        "Attempts of retried calls, by outcome: success, retried (failed, tried again), or final (failed, given up) with the reason; and not_started, calls given up before their first attempt for lack of time.",
			ConstLabels: prometheus.Labels{"name": name},
		}, []string{"outcome"}),
	}
	if err := reg.Register(r.attempts); err != nil {
		return nil, fmt.Errorf("retrier %s metrics: %w", name, err)
	}
	return r, nil
}

// WithRandom replaces the jitter source, for tests. It returns r.
func (r *Retrier) WithRandom(random func() float64) *Retrier {
	r.random = random
	return r
}

// Do calls fn until it succeeds, its error is not worth retrying, the
// attempts or the budget run out, or ctx's deadline is too close for
// another attempt. It returns fn's last error, or ErrDeadlineTooClose if
// the deadline was too close for even the first. It returns at once when
// ctx ends, even while waiting to retry.
func (r *Retrier) Do(ctx context.Context, fn func(context.Context) error) error {
	// The caller may have spent most of its time before calling us, in a
	// queue or waiting for quota: the first attempt needs the check as
	// much as the retries do.
	if left, late := r.tooLate(ctx, 0); late {
		r.attempts.WithLabelValues("not_started").Inc()
		return fmt.Errorf("%w: %s left, an attempt may take %s", ErrDeadlineTooClose, left.Round(time.Millisecond), r.policy.AttemptTimeout)
	}
	r.budget.recordCall() // only calls that reach the dependency earn retries
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			r.attempts.WithLabelValues("success").Inc()
			return nil
		}
		wait, reason := r.next(ctx, attempt, err)
		if reason != "" {
			r.attempts.WithLabelValues("final_" + reason).Inc()
			return err
		}
		r.attempts.WithLabelValues("retried").Inc()
		if serr := sleep(ctx, wait); serr != nil {
			// Both stay visible to errors.Is: the caller's cancellation,
			// and what the dependency last said (was it sent or not).
			return fmt.Errorf("%w while waiting to retry; last attempt: %w", serr, err)
		}
		// next made sure there would be time, but a timer on a loaded
		// machine can fire late: give up as next would have.
		if _, late := r.tooLate(ctx, 0); late {
			return err
		}
	}
}

// next decides what follows a failed attempt: the wait before retrying, or
// the reason to give up.
func (r *Retrier) next(ctx context.Context, attempt int, err error) (time.Duration, string) {
	if ctx.Err() != nil {
		return 0, "cancelled"
	}
	if errors.Is(err, ErrBreakerOpen) || errors.Is(err, ErrBulkheadFull) {
		return 0, "rejected"
	}
	v := r.classify(err)
	switch {
	case !v.Retry:
		return 0, "not_retryable"
	case attempt >= r.policy.MaxAttempts:
		return 0, "attempts"
	case v.After > r.policy.MaxRetryAfter:
		// Retrying sooner than the dependency asked would ignore it;
		// waiting longer than we are willing to would hold the caller.
		return 0, "retry_after"
	}
	wait := max(r.backoff(attempt), v.After)
	if _, late := r.tooLate(ctx, wait); late {
		// Give up now rather than after a wait that cannot end in an
		// attempt: the caller gets its answer sooner.
		return 0, "deadline"
	}
	if !r.budget.withdraw() {
		return 0, "budget"
	}
	return wait, ""
}

// tooLate reports whether an attempt started after wait could not run for
// the whole AttemptTimeout before ctx's deadline, and the time left now.
func (r *Retrier) tooLate(ctx context.Context, wait time.Duration) (left time.Duration, late bool) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return 0, false
	}
	left = time.Until(deadline)
	return left, left < wait+r.policy.AttemptTimeout
}

// backoff is the full-jitter delay before retry number attempt (1-based).
func (r *Retrier) backoff(attempt int) time.Duration {
	ceiling := r.policy.MaxDelay
	if shift := attempt - 1; shift < 32 { // beyond, BaseDelay<<shift overflows
		ceiling = min(ceiling, r.policy.BaseDelay<<shift)
	}
	return time.Duration(r.random() * float64(ceiling))
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetryBudget caps retries to a fraction of calls, shared by every caller
// of one dependency, as gRPC's retry throttling and Finagle's (and Envoy's)
// retry budgets do. It is a token bucket: each call deposits Ratio tokens,
// each retry withdraws one, and a floor of MinPerSecond tokens a second
// trickles in so that a quiet service can still retry at all. The bucket
// holds at most Capacity tokens, so a long calm spell cannot save up a
// burst of retries for the next outage.
//
// Against a dependency that always fails, callers making R calls a second
// make, in the long run,
//
//	min(MaxAttempts, 1 + Ratio + MinPerSecond/R)
//
// attempts per call instead of MaxAttempts (what was saved, at most
// Capacity, comes on top once). The floor is a number of retries a second,
// not a fraction of calls, so it matters at low rates only: with Ratio 0.2
// and a floor of 5/s that is 1.225 at 200 calls/s and 1.45 at 20/s, and
// below about 3 calls/s every call makes all its attempts. There is little
// load to amplify then, and a quiet service keeps its retries.
type RetryBudget struct {
	ratio, perSecond, capacity float64

	mu     sync.Mutex
	tokens float64
	last   time.Time

	exhausted prometheus.Counter
}

// BudgetSettings size a RetryBudget.
type BudgetSettings struct {
	Name         string  // the dependency; a metric label
	Ratio        float64 // retries earned per call
	MinPerSecond float64 // retries a second always earned
	Capacity     int     // most retries saved up
}

// NewRetryBudget returns a full budget for the named dependency.
func NewRetryBudget(s BudgetSettings, reg prometheus.Registerer) (*RetryBudget, error) {
	name, ratio, minPerSecond, capacity := s.Name, s.Ratio, s.MinPerSecond, float64(s.Capacity)
	if ratio < 0 || minPerSecond < 0 || capacity < 1 {
		return nil, fmt.Errorf("retry budget %s: invalid ratio %g, floor %g/s, capacity %g", name, ratio, minPerSecond, capacity)
	}
	b := &RetryBudget{
		ratio: ratio, perSecond: minPerSecond, capacity: capacity,
		tokens: capacity, last: time.Now(),
		exhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "retry_budget_exhausted_total",
			Help:        "Retries not made because the dependency's retry budget was empty.",
			ConstLabels: prometheus.Labels{"name": name},
		}),
	}
	if err := reg.Register(b.exhausted); err != nil {
		return nil, fmt.Errorf("retry budget %s metrics: %w", name, err)
	}
	return b, nil
}

// refill adds the floor's tokens for the time since the last refill.
// The caller holds b.mu.
func (b *RetryBudget) refill() {
	now := time.Now()
	b.tokens = min(b.capacity, b.tokens+now.Sub(b.last).Seconds()*b.perSecond)
	b.last = now
}

func (b *RetryBudget) recordCall() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	b.tokens = min(b.capacity, b.tokens+b.ratio)
}

func (b *RetryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill()
	if b.tokens < 1 {
		b.exhausted.Inc()
		return false
	}
	b.tokens--
	return true
}
