package resilience

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Errors of Bulkhead.Submit.
var (
	// ErrBulkheadFull means every worker is busy and the queue is full:
	// the work was refused at once, without waiting.
	ErrBulkheadFull = errors.New("bulkhead full")
	// ErrBulkheadClosed means the bulkhead is shutting down.
	ErrBulkheadClosed = errors.New("bulkhead closed")
)

// Bulkhead runs work on a fixed set of workers with a bounded queue in
// front, like a ship's watertight compartments: when a dependency slows
// down, the calls waiting for it pile up here, up to a limit, instead of
// taking every goroutine, connection and byte of memory the service has.
// Beyond the limit, work is refused at once, which the API turns into a
// fast 503 rather than a slow timeout.
//
// Work that is still queued when its caller gives up is removed from the
// queue at once; work that has started runs to its end (it receives the
// caller's context and should honour it).
type Bulkhead struct {
	name     string
	capacity int // workers + queue: work admitted at once, running or waiting

	mu       sync.Mutex
	cond     *sync.Cond // signalled when work is queued or the bulkhead closes
	queue    list.List  // of *job
	closed   bool
	inFlight int

	running sync.WaitGroup // the workers

	inFlightGauge prometheus.Gauge
	queueGauge    prometheus.Gauge
	rejections    *prometheus.CounterVec
}

type job struct {
	ctx      context.Context
	fn       func(context.Context) error
	err      error
	panicked *panicError // fn's panic, if it panicked
	done     chan struct{}
	elem     *list.Element // in the queue while not nil; guarded by Bulkhead.mu
}

// run calls fn, recovering a panic: nothing recovers panics on a worker's
// goroutine (net/http does only on its handlers'), so one would kill the
// process.
func (j *job) run() {
	defer func() {
		if v := recover(); v != nil {
			j.panicked = &panicError{value: v, stack: debug.Stack()}
		}
	}()
	j.err = j.fn(j.ctx)
}

// result is what Submit returns for a finished job. A panic in fn is
// raised again here, on the caller's goroutine, where it would have been
// had the caller run fn itself: an HTTP handler's recovery then answers
// 500, and the worker lives on.
func (j *job) result() error {
	if j.panicked != nil {
		panic(j.panicked)
	}
	return j.err
}

// panicError is a panic carried from a worker to the Submit caller, with
// the worker's stack, which the panic raised again would otherwise lose
// (as golang.org/x/sync/singleflight does).
type panicError struct {
	value any
	stack []byte
}

func (p *panicError) Error() string {
	return fmt.Sprintf("panic in bulkhead work: %v\n\nworker stack:\n%s", p.value, p.stack)
}

// Unwrap exposes the panic value when it is an error.
func (p *panicError) Unwrap() error {
	err, _ := p.value.(error)
	return err
}

// NewBulkhead starts workers goroutines that take work from a queue of at
// most queueSize. Close stops them.
func NewBulkhead(name string, workers, queueSize int, reg prometheus.Registerer) (*Bulkhead, error) {
	if workers < 1 || queueSize < 0 {
		return nil, fmt.Errorf("bulkhead %s: need at least one worker and a non-negative queue, got %d and %d", name, workers, queueSize)
	}
	labels := prometheus.Labels{"name": name}
	b := &Bulkhead{
		name:     name,
		capacity: workers + queueSize,
		inFlightGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulkhead_in_flight", Help: "Work running on the bulkhead's workers.", ConstLabels: labels,
		}),
		queueGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulkhead_queue_depth", Help: "Work waiting for a bulkhead worker.", ConstLabels: labels,
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_rejections_total", Help: "Work refused by the bulkhead, by reason (full, closed).", ConstLabels: labels,
		}, []string{"reason"}),
	}
	if err := registerAll(reg, b.inFlightGauge, b.queueGauge, b.rejections); err != nil {
		return nil, fmt.Errorf("bulkhead %s metrics: %w", name, err)
	}
	b.cond = sync.NewCond(&b.mu)
	for range workers {
		b.running.Go(b.work)
	}
	return b, nil
}

// Submit runs fn on a worker and returns its error. It returns
// ErrBulkheadFull at once when the queue is full, and ctx's error if ctx
// ends while fn is still queued (fn then never runs). Once fn has started,
// Submit waits for it to finish; if fn panics, Submit panics with the
// panic and the worker's stack.
func (b *Bulkhead) Submit(ctx context.Context, fn func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j := &job{ctx: ctx, fn: fn, done: make(chan struct{})}

	b.mu.Lock()
	switch {
	case b.closed:
		b.mu.Unlock()
		b.rejections.WithLabelValues("closed").Inc()
		return fmt.Errorf("%w (%s)", ErrBulkheadClosed, b.name)
	case b.inFlight+b.queue.Len() >= b.capacity:
		b.mu.Unlock()
		b.rejections.WithLabelValues("full").Inc()
		return fmt.Errorf("%w (%s)", ErrBulkheadFull, b.name)
	}
	j.elem = b.queue.PushBack(j)
	b.queueGauge.Set(float64(b.queue.Len()))
	b.cond.Signal()
	b.mu.Unlock()

	select {
	case <-j.done:
		return j.result()
	case <-ctx.Done():
	}
	b.mu.Lock()
	if j.elem != nil { // still queued: withdraw it, freeing its slot now
		b.queue.Remove(j.elem)
		j.elem = nil
		b.queueGauge.Set(float64(b.queue.Len()))
		b.mu.Unlock()
		return ctx.Err()
	}
	b.mu.Unlock()
	<-j.done // already running: it has ctx, and will end
	return j.result()
}

// work is one worker: it runs queued jobs until the bulkhead is closed and
// the queue is empty.
func (b *Bulkhead) work() {
	for {
		b.mu.Lock()
		for b.queue.Len() == 0 && !b.closed {
			b.cond.Wait()
		}
		if b.queue.Len() == 0 { // closed and drained
			b.mu.Unlock()
			return
		}
		j := b.queue.Remove(b.queue.Front()).(*job)
		j.elem = nil
		b.inFlight++
		b.queueGauge.Set(float64(b.queue.Len()))
		b.inFlightGauge.Set(float64(b.inFlight))
		b.mu.Unlock()

		j.run()

		b.mu.Lock()
		b.inFlight--
		b.inFlightGauge.Set(float64(b.inFlight))
		b.mu.Unlock()
		// Only now release the caller: once Submit returns, the job's slot
		// must be free, or a caller submitting again at once could be
		// refused by an idle bulkhead.
		close(j.done)
	}
}

// Close refuses new work and waits until the work already accepted —
// running or queued — has finished, or ctx ends. It is the bulkhead's part
// of a graceful shutdown.
func (b *Bulkhead) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()

	drained := make(chan struct{})
	go func() { // ends when the last worker does, even if ctx ends first
		b.running.Wait()
		close(drained)
	}()
	select {
	case <-drained:
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
	return b.closed || b.inFlight+b.queue.Len() >= b.capacity
}

// Stats returns the work running and queued now.
func (b *Bulkhead) Stats() (inFlight, queued int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight, b.queue.Len()
}
