package resilience

import (
	"context"
	"errors"
	"runtime"
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

// occupy submits n jobs that block until release is closed, and waits
// until they are accepted (running or queued).
func occupy(t *testing.T, b *Bulkhead, n int, release <-chan struct{}) *sync.WaitGroup {
	t.Helper()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if err := b.Submit(context.Background(), func(context.Context) error { <-release; return nil }); err != nil {
				t.Errorf("occupying submit: %v", err)
			}
		})
	}
	waitFor(t, func() bool { running, queued := b.Stats(); return running+queued == n })
	return &wg
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}

func TestBulkhead_RejectsAtOnceWhenFull(t *testing.T) {
	b, reg := newTestBulkhead(t, 2, 3)
	release := make(chan struct{})
	wg := occupy(t, b, 5, release)

	start := time.Now()
	err := b.Submit(context.Background(), func(context.Context) error {
		t.Error("work beyond capacity ran")
		return nil
	})
	if !errors.Is(err, ErrBulkheadFull) {
		t.Fatalf("err = %v, want ErrBulkheadFull", err)
	}
	if waited := time.Since(start); waited > 50*time.Millisecond {
		t.Errorf("rejection took %s, want at once", waited)
	}
	for metric, want := range map[string]float64{
		"payservice_bulkhead_in_flight":        2,
		"payservice_bulkhead_queue_depth":      3,
		"payservice_bulkhead_rejections_total": 1,
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
		wg := occupy(t, b, 1, release)

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
	b, reg := newTestBulkhead(t, 4, n)
	release := make(chan struct{})
	wg := occupy(t, b, 4, release) // every worker busy: submissions queue
	baseline := runtime.NumGoroutine()

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
	if got := metricValue(t, reg, "payservice_bulkhead_queue_depth", nil); got != 0 {
		t.Errorf("queue depth gauge = %v, want 0", got)
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= baseline })
	close(release)
	wg.Wait()
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ran.Load() != 0 {
		t.Errorf("%d cancelled jobs ran", ran.Load())
	}
	// The workers are gone too.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= baseline-4 })
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
		wg := occupy(t, b, 1, release)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with stuck work = %v, want the deadline", err)
		}
		close(release)
		wg.Wait()
	})
}
