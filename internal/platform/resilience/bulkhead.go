package resilience

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Errors of Bulkhead.Submit.
var (
	// ErrBulkheadFull means every slot is taken and as many calls as
	// allowed already wait for one: the work was refused at once, without
	// waiting.
	ErrBulkheadFull = errors.New("bulkhead full")
	// ErrBulkheadClosed means the bulkhead is shutting down.
	ErrBulkheadClosed = errors.New("bulkhead closed")
)

// Bulkhead bounds the calls to a dependency, like a ship's watertight
// compartments: when the dependency slows down, the calls waiting for it
// pile up here, up to a limit, instead of taking every goroutine,
// connection and byte of memory the service has. Beyond the limit, work is
// refused at once, which the API turns into a fast 503 rather than a slow
// timeout.
//
// It is a counting semaphore with a bounded, first-in first-out line of
// waiters: at most Concurrency calls run at once, at most Queue more wait
// for a slot, and a slot freed goes straight to the oldest waiter, so that
// a call arriving later cannot overtake it. The work runs on the caller's
// own goroutine, as if the caller had called it itself: no hand-off to
// another goroutine, no pool of goroutines to size or stop, and no
// allocation when a slot is free. The price is that the caller's goroutine
// blocks while it waits for a slot, which is what an HTTP handler calling
// the dependency does anyway.
//
// A caller that gives up while waiting leaves the line at once and its
// work never runs; work that has started runs to its end (it receives the
// caller's context and should honour it).
type Bulkhead struct {
	name       string
	slots      int // calls running at once
	maxWaiting int // calls waiting for a slot

	mu      sync.Mutex
	running int       // slots taken, including those handed to a waiter not yet awake
	waiters list.List // of *waiter, oldest first; not empty only while running == slots
	closed  bool
	drained chan struct{} // closed once closed and nothing runs or waits

	inFlightGauge prometheus.Gauge
	queueGauge    prometheus.Gauge
	rejections    *prometheus.CounterVec

	// afterCancel, if set, is called by a waiter whose context has ended,
	// before it takes the lock to leave the line. Tests only: it lets them
	// hand the waiter a slot at that very moment.
	afterCancel func()
}

// waiter is a call waiting for a slot.
type waiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool          // the slot is this waiter's; guarded by Bulkhead.mu
}

// BulkheadSettings size a Bulkhead.
type BulkheadSettings struct {
	Name        string // the dependency; a metric label
	Concurrency int    // calls running at once
	Queue       int    // calls waiting for a slot
}

// NewBulkhead returns a bulkhead that runs at most s.Concurrency calls at
// once and lets at most s.Queue more wait for a slot. It starts no
// goroutine; Close is for a graceful shutdown.
func NewBulkhead(s BulkheadSettings, reg prometheus.Registerer) (*Bulkhead, error) {
	name, workers, queueSize := s.Name, s.Concurrency, s.Queue
	if workers < 1 || queueSize < 0 {
		return nil, fmt.Errorf("bulkhead %s: need at least one call at a time and a non-negative queue, got %d and %d", name, workers, queueSize)
	}
	labels := prometheus.Labels{"name": name}
	b := &Bulkhead{
		name:       name,
		slots:      workers,
		maxWaiting: queueSize,
		drained:    make(chan struct{}),
		inFlightGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulkhead_in_flight", Help: "Calls running in the bulkhead.", ConstLabels: labels,
		}),
		queueGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulkhead_queue_depth", Help: "Calls waiting for a bulkhead slot.", ConstLabels: labels,
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_rejections_total", Help: "Work refused by the bulkhead, by reason (full, closed).", ConstLabels: labels,
		}, []string{"reason"}),
	}
	// Every reason from zero: a rate over a series that appears only at
	// the first refusal misses that refusal, and alerts on it start late.
	for _, reason := range []string{"full", "closed"} {
		b.rejections.WithLabelValues(reason)
	}
	if err := registerAll(reg, b.inFlightGauge, b.queueGauge, b.rejections); err != nil {
		return nil, fmt.Errorf("bulkhead %s metrics: %w", name, err)
	}
	return b, nil
}

// Submit runs fn on the caller's goroutine once a slot is free, and returns
// its error. It returns ErrBulkheadFull at once when every slot is taken
// and the line of waiters is full, and ctx's error if ctx ends before fn
// starts (fn then never runs). A panic in fn goes through Submit to its
// caller, as it would have had the caller run fn itself; the slot is freed
// on the way, as it is before Submit returns.
func (b *Bulkhead) Submit(ctx context.Context, fn func(context.Context) error) error {
	if err := b.acquire(ctx); err != nil {
		return err
	}
	defer b.release()
	return fn(ctx)
}

// acquire takes a slot, waiting in line for one if need be.
func (b *Bulkhead) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		b.rejections.WithLabelValues("closed").Inc()
		return fmt.Errorf("%w (%s)", ErrBulkheadClosed, b.name)
	case b.running < b.slots: // then nobody waits: a slot freed goes to a waiter
		b.running++
		b.inFlightGauge.Set(float64(b.running))
		b.mu.Unlock()
		return nil
	case b.waiters.Len() >= b.maxWaiting:
		b.mu.Unlock()
		b.rejections.WithLabelValues("full").Inc()
		return fmt.Errorf("%w (%s)", ErrBulkheadFull, b.name)
	}
	w := &waiter{ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.queueGauge.Set(float64(b.waiters.Len()))
	b.mu.Unlock()

	select {
	case <-w.ready:
	case <-ctx.Done():
	}
	if ctx.Err() == nil { // woken by the hand-over: the slot is ours
		return nil
	}
	// ctx has ended, perhaps just as the slot was handed over: then the
	// slot is passed on, as if fn had run and returned at once, rather
	// than spent on work whose caller has given up.
	if b.afterCancel != nil {
		b.afterCancel()
	}
	b.mu.Lock()
	if w.granted {
		b.releaseLocked()
	} else {
		b.waiters.Remove(elem)
		b.queueGauge.Set(float64(b.waiters.Len()))
		b.drainedLocked()
	}
	b.mu.Unlock()
	return ctx.Err()
}

// release frees the slot taken by acquire.
func (b *Bulkhead) release() {
	b.mu.Lock()
	b.releaseLocked()
	b.mu.Unlock()
}

// releaseLocked hands the slot to the oldest waiter, if any, or frees it.
// Handing it over, rather than freeing it for the waiter to take, is what
// keeps a call arriving meanwhile from overtaking the waiters.
func (b *Bulkhead) releaseLocked() {
	if front := b.waiters.Front(); front != nil {
		w := b.waiters.Remove(front).(*waiter)
		w.granted = true
		close(w.ready)
		b.queueGauge.Set(float64(b.waiters.Len()))
		return // running is unchanged: the slot changed hands
	}
	b.running--
	b.inFlightGauge.Set(float64(b.running))
	b.drainedLocked()
}

// drainedLocked closes drained once the bulkhead is closed and nothing runs
// or waits any more. Nothing can be admitted after that, so it happens once.
func (b *Bulkhead) drainedLocked() {
	if b.closed && b.running == 0 && b.waiters.Len() == 0 {
		close(b.drained)
	}
}

// Close refuses new work and waits until the work already accepted —
// running or waiting for a slot — has finished, or ctx ends. It is the
// bulkhead's part of a graceful shutdown. Work still running when ctx ends
// carries on; Stats tells how much there was.
func (b *Bulkhead) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		b.drainedLocked()
	}
	b.mu.Unlock()

	select {
	case <-b.drained:
		return nil
	default:
	}
	select {
	case <-b.drained:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bulkhead %s: work still running at shutdown: %w", b.name, ctx.Err())
	}
}

// Full reports whether Submit would refuse work now. It is a snapshot:
// for shedding load before doing work that a refusal would waste.
func (b *Bulkhead) Full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed || (b.running >= b.slots && b.waiters.Len() >= b.maxWaiting)
}

// Stats returns the calls running and waiting for a slot now.
func (b *Bulkhead) Stats() (inFlight, queued int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running, b.waiters.Len()
}
