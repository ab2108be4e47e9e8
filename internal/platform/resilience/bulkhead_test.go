package resilience

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func newTestBulkhead(t *testing.T, workers, queue int) (*Bulkhead, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	b, err := NewBulkhead("dep", workers, queue, reg)
	if err != nil {
		t.Fatal(err)
	}
	return b, reg
}

// occupy submits running+queued jobs that block until release is closed,
// and waits until exactly running of them run and queued wait: a job
// accepted but not yet picked up by a free worker is queued for a moment.
func occupy(t *testing.T, b *Bulkhead, running, queued int, release <-chan struct{}) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	for range running + queued {
		wg.Go(func() {
			if err := b.Submit(context.Background(), func(context.Context) error { <-release; return nil }); err != nil {
				t.Errorf("occupying submit: %v", err)
			}
		})
	}
	waitFor(t, func() bool { r, q := b.Stats(); return r == running && q == queued })
	return &wg
}

// waitFor polls cond. Its deadline is generous: it is only reached when a
// test fails, and a loaded CI machine running -race is slow.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
	}
}

func TestBulkhead_RejectsAtOnceWhenFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, reg := newTestBulkhead(t, 2, 3)
		release := make(chan struct{})
		wg := occupy(t, b, 2, 3, release)

		// Nothing frees a slot until release is closed, below: a Submit
		// that waited for room would never return (synctest reports the
		// deadlock), and one that slept would move the bubble's clock.
		start := time.Now()
		err := b.Submit(context.Background(), func(context.Context) error {
			t.Error("work beyond capacity ran")
			return nil
		})
		if !errors.Is(err, ErrBulkheadFull) {
			t.Fatalf("err = %v, want ErrBulkheadFull", err)
		}
		if waited := time.Since(start); waited != 0 {
			t.Errorf("rejection took %s, want at once", waited)
		}
		for metric, want := range map[string]float64{
			"bulkhead_in_flight":        2,
			"bulkhead_queue_depth":      3,
			"bulkhead_rejections_total": 1,
		} {
			if got := metricValue(t, reg, metric, nil); got != want {
				t.Errorf("%s = %v, want %v", metric, got, want)
			}
		}
		close(release)
		wg.Wait()
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestBulkhead_ReturnsTheWorkError(t *testing.T) {
	b, _ := newTestBulkhead(t, 1, 0)
	defer b.Close(context.Background())
	want := errors.New("dependency said no")
	if err := b.Submit(context.Background(), func(context.Context) error { return want }); !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

func TestBulkhead_CancelledWhileQueuedNeverRuns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 1, 1)
		release := make(chan struct{})
		wg := occupy(t, b, 1, 0, release)

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var ran atomic.Bool
		err := b.Submit(ctx, func(context.Context) error { ran.Store(true); return nil })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's deadline", err)
		}
		if _, queued := b.Stats(); queued != 0 {
			t.Errorf("the cancelled job still holds a queue slot")
		}
		close(release)
		wg.Wait()
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if ran.Load() {
			t.Error("a job cancelled while queued ran later")
		}
	})
}

func TestBulkhead_TenThousandCancelledSubmissionsLeakNothing(t *testing.T) {
	const n = 10_000
	before := runtime.NumGoroutine()
	b, reg := newTestBulkhead(t, 4, n)
	release := make(chan struct{})
	wg := occupy(t, b, 4, 0, release) // every worker busy: submissions queue
	busy := runtime.NumGoroutine()

	// Queue them all, then cancel them all while they wait.
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Int64
	var submitters sync.WaitGroup
	for range n {
		submitters.Go(func() {
			err := b.Submit(ctx, func(context.Context) error { ran.Add(1); return nil })
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Submit = %v, want context.Canceled", err)
			}
		})
	}
	waitFor(t, func() bool { _, queued := b.Stats(); return queued == n })
	cancel()
	submitters.Wait()

	if running, queued := b.Stats(); running != 4 || queued != 0 {
		t.Errorf("after the cancellations: %d running, %d queued; want 4 and 0", running, queued)
	}
	if got := metricValue(t, reg, "bulkhead_queue_depth", nil); got != 0 {
		t.Errorf("queue depth gauge = %v, want 0", got)
	}
	// No submission left a goroutine behind (exiting ones may linger a
	// moment after submitters.Wait returns, hence the polling).
	waitFor(t, func() bool { return runtime.NumGoroutine() <= busy })
	close(release)
	wg.Wait()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ran.Load() != 0 {
		t.Errorf("%d cancelled jobs ran", ran.Load())
	}
	// The workers are gone too: back to the goroutines from before the
	// bulkhead existed. Four workers left running would never get there.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= before })
}

func TestBulkhead_SlotIsFreeOnceSubmitReturns(t *testing.T) {
	// One worker, no queue: every submission needs the slot the previous
	// one held. Were the caller released before the slot, the next
	// submission would now and then be refused by an idle bulkhead.
	b, _ := newTestBulkhead(t, 1, 0)
	defer b.Close(context.Background())
	for i := range 10_000 {
		if err := b.Submit(context.Background(), func(context.Context) error { return nil }); err != nil {
			t.Fatalf("submission %d, made after the previous one returned: %v", i+1, err)
		}
		if b.Full() {
			t.Fatalf("Full() right after submission %d returned, with nothing running", i+1)
		}
	}
}

func TestBulkhead_PanicInWorkReachesTheCallerAndSparesTheWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 1, 0)
		defer b.Close(context.Background())
		boom := errors.New("boom")
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			_ = b.Submit(context.Background(), func(context.Context) error { panic(boom) })
		}()
		err, _ := recovered.(error)
		if !errors.Is(err, boom) {
			t.Fatalf("Submit's caller recovered %v, want the work's panic", recovered)
		}
		// The stack of the panic is the worker's, not only the caller's.
		if !strings.Contains(err.Error(), t.Name()) {
			t.Errorf("the panic carries no stack of the work that panicked:\n%v", err)
		}
		// The only worker survived and took its slot back.
		if err := b.Submit(context.Background(), func(context.Context) error { return nil }); err != nil {
			t.Errorf("Submit after a panic = %v, want the worker to live on", err)
		}
	})
}

func TestBulkhead_CloseDrainsAcceptedWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 2, 3)
		var done atomic.Int64
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				err := b.Submit(context.Background(), func(context.Context) error {
					time.Sleep(time.Second)
					done.Add(1)
					return nil
				})
				if err != nil {
					t.Errorf("accepted work failed: %v", err)
				}
			})
		}
		synctest.Wait() // all five accepted: two running, three queued
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if done.Load() != 5 {
			t.Fatalf("Close returned with %d of 5 accepted jobs done", done.Load())
		}
		wg.Wait()
		if err := b.Submit(context.Background(), func(context.Context) error { return nil }); !errors.Is(err, ErrBulkheadClosed) {
			t.Errorf("Submit after Close = %v, want ErrBulkheadClosed", err)
		}
	})
}

func TestBulkhead_CloseGivesUpAtItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 1, 0)
		release := make(chan struct{})
		wg := occupy(t, b, 1, 0, release)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with stuck work = %v, want the deadline", err)
		}
		close(release)
		wg.Wait()
	})
}
