package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// ErrBreakerOpen is returned, at once and without calling the dependency,
// while a circuit breaker is open or its half-open probes are all taken.
var ErrBreakerOpen = errors.New("circuit breaker open")

// Outcome is how a call's result counts for a circuit breaker.
type Outcome int

const (
	// Success: the dependency is healthy, even if the answer was a "no"
	// (a declined order, a 404): that is the caller's business.
	Success Outcome = iota
	// Failure: the dependency is unhealthy (5xx, timeout, network error).
	Failure
	// Ignore: says nothing about the dependency's health.
	Ignore
)

// BreakerSettings configures a Breaker. The trip rule is a rolling window:
// the breaker opens when, over the last Window, at least MinRequests calls
// completed and at least FailureRatio of them failed. A ratio over a window,
// unlike "N consecutive failures", neither trips on a short burst at low
// traffic nor ignores a steady 30% failure rate at high traffic.
type BreakerSettings struct {
	Name           string        // the dependency; a metric label
	Window         time.Duration // rolling window of the trip rule
	MinRequests    int           // completed calls in the window before it may trip
	FailureRatio   float64       // failures/completed calls that trip it, in (0, 1]
	OpenTimeout    time.Duration // how long it stays open before probing
	HalfOpenProbes int           // calls let through half-open; all must succeed to close
}

// windowBuckets is how finely the window rolls: counts age out a tenth of
// the window at a time rather than all at once.
const windowBuckets = 10

// Breaker is a circuit breaker: after a dependency fails often enough it
// fails calls at once for a while, instead of piling more load onto
// something that is down and making every caller wait for its timeouts.
// It wraps github.com/sony/gobreaker/v2 and adds what that leaves to its
// users: classification, the ratio trip rule, metrics and logs.
type Breaker struct {
	cb       *gobreaker.CircuitBreaker[struct{}]
	classify func(error) Outcome
	probes   uint32 // BreakerSettings.HalfOpenProbes
}

// excluded marks an error the breaker must not count.
type excluded struct{ err error }

func (e excluded) Error() string { return e.err.Error() }
func (e excluded) Unwrap() error { return e.err }

// NewBreaker returns a breaker for one dependency. classify tells it which
// errors are the dependency's fault; a nil error is always a success, and
// an error after the caller's own context ended is always ignored.
func NewBreaker(s BreakerSettings, classify func(error) Outcome, reg prometheus.Registerer, log *slog.Logger) (*Breaker, error) {
	if s.Window <= 0 || s.OpenTimeout <= 0 || s.MinRequests < 1 || s.HalfOpenProbes < 1 ||
		s.FailureRatio <= 0 || s.FailureRatio > 1 {
		return nil, fmt.Errorf("breaker %s: invalid settings %+v", s.Name, s)
	}
	transitions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "breaker_transitions_total",
		Help:        "Circuit breaker state changes, by previous and new state.",
		ConstLabels: prometheus.Labels{"name": s.Name},
	}, []string{"from", "to"})
	// Every transition gobreaker makes, from zero: the first opening is
	// then an increase a rate (and an alert) sees, not a series appearing.
	for _, t := range [][2]gobreaker.State{
		{gobreaker.StateClosed, gobreaker.StateOpen},
		{gobreaker.StateOpen, gobreaker.StateHalfOpen},
		{gobreaker.StateHalfOpen, gobreaker.StateClosed},
		{gobreaker.StateHalfOpen, gobreaker.StateOpen},
	} {
		transitions.WithLabelValues(t[0].String(), t[1].String())
	}

	b := &Breaker{classify: classify, probes: uint32(s.HalfOpenProbes)}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         s.Name,
		MaxRequests:  uint32(s.HalfOpenProbes),
		Interval:     s.Window,
		BucketPeriod: s.Window / windowBuckets,
		Timeout:      s.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			completed := c.TotalSuccesses + c.TotalFailures
			return completed >= uint32(s.MinRequests) && float64(c.TotalFailures) >= s.FailureRatio*float64(completed)
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			transitions.WithLabelValues(from.String(), to.String()).Inc()
			level := slog.LevelWarn
			if to == gobreaker.StateClosed {
				level = slog.LevelInfo
			}
			log.Log(context.Background(), level, "circuit breaker state change",
				"breaker", name, "from", from.String(), "to", to.String())
		},
		IsExcluded: func(err error) bool {
			if err == nil { // the common case: no errors.As target to allocate
				return false
			}
			var ex excluded
			return errors.As(err, &ex) || classify(err) == Ignore
		},
		IsSuccessful: func(err error) bool { return err == nil || classify(err) == Success },
	})

	// The state is read at scrape time: gobreaker moves from open to
	// half-open lazily, when asked, and asking is what a scrape does.
	state := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "breaker_state",
		Help:        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
		ConstLabels: prometheus.Labels{"name": s.Name},
	}, func() float64 { return float64(b.cb.State()) })
	if err := registerAll(reg, transitions, state); err != nil {
		return nil, fmt.Errorf("breaker %s metrics: %w", s.Name, err)
	}
	return b, nil
}

// Execute calls fn unless the breaker is open, and records how it went.
// While open (or half-open with every probe taken) it returns an error
// matching ErrBreakerOpen without calling fn.
func (b *Breaker) Execute(ctx context.Context, fn func(context.Context) error) error {
	_, err := b.cb.Execute(func() (struct{}, error) {
		err := fn(ctx)
		if err != nil && ctx.Err() != nil {
			// The caller gave up: that says nothing about the
			// dependency, so neither a success nor a failure.
			return struct{}{}, excluded{err}
		}
		return struct{}{}, err
	})
	if err == nil {
		return nil
	}
	var ex excluded
	switch {
	case errors.As(err, &ex):
		return ex.err
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		// %v: callers branch on ErrBreakerOpen; gobreaker's own errors
		// stay an implementation detail.
		return fmt.Errorf("%w (%s: %v)", ErrBreakerOpen, b.cb.Name(), err) //nolint:errorlint // see above
	}
	return err
}

// State returns the breaker's state: "closed", "half-open" or "open".
func (b *Breaker) State() string { return b.cb.State().String() }

// Open reports whether the breaker would refuse a call now, without
// calling anything: for shedding load before doing work a refused call
// would waste. That is while it is open, and while it is half-open with
// every probe taken: a caller let through then would only be refused
// later, after the work. It is a snapshot, like gobreaker's own State.
func (b *Breaker) Open() bool {
	switch b.cb.State() {
	case gobreaker.StateOpen:
		return true
	case gobreaker.StateHalfOpen:
		// gobreaker's own test before a call: a probe whose outcome was
		// excluded (its caller gave up) hands its slot back.
		c := b.cb.Counts()
		return c.Requests-min(c.Requests, c.TotalExclusions) >= b.probes
	}
	return false
}

// registerAll registers collectors, stopping at the first error.
func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
