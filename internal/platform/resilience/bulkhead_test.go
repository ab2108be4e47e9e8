package resilience

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"strconv"
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
	b, err := NewBulkhead(BulkheadSettings{Name: "dep", Concurrency: workers, Queue: queue}, reg)
	if err != nil {
		t.Fatal(err)
	}
	return b, reg
}

// occupy submits running+queued calls that block until release is closed,
// and waits until running of them run and queued wait for a slot (each
// from a goroutine of its own, so they arrive in no particular order).
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
	wg := occupy(t, b, 4, 0, release) // every slot taken: submissions wait
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
	// Back to the goroutines from before the bulkhead existed: it has none
	// of its own, and the occupying calls have returned.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= before })
}

func TestBulkhead_SlotIsFreeOnceSubmitReturns(t *testing.T) {
	// One slot, no line: every submission needs the slot the previous one
	// held. Were the caller released before the slot, Stats would show it
	// still taken, and the next submission could be refused by an idle
	// bulkhead.
	b, _ := newTestBulkhead(t, 1, 0)
	defer b.Close(context.Background())
	for i := range 10_000 {
		err := b.Submit(context.Background(), func(context.Context) error {
			if running, _ := b.Stats(); running != 1 {
				t.Fatalf("submission %d: Stats shows %d running from inside the call, want 1", i+1, running)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("submission %d, made after the previous one returned: %v", i+1, err)
		}
		if running, queued := b.Stats(); running != 0 || queued != 0 {
			t.Fatalf("right after submission %d returned: %d running, %d queued; want none", i+1, running, queued)
		}
		if b.Full() {
			t.Fatalf("Full() right after submission %d returned, with nothing running", i+1)
		}
	}
}

func TestBulkhead_PanicInWorkReachesTheCallerAndFreesTheSlot(t *testing.T) {
	b, _ := newTestBulkhead(t, 1, 0) // not closed: a leaked slot would hang Close
	boom := errors.New("boom")
	var recovered any
	var stack string
	func() {
		defer func() {
			recovered = recover()
			stack = string(debug.Stack()) // still the panicking stack
		}()
		_ = b.Submit(context.Background(), func(context.Context) error { panic(boom) })
	}()
	// The panic is fn's own, not wrapped, and it unwound through Submit on
	// this goroutine: the stack holds the work, Submit and this test.
	if recovered != boom { //nolint:errorlint // the very value, unwrapped, is the property
		t.Fatalf("Submit's caller recovered %v, want the work's panic itself", recovered)
	}
	for _, frame := range []string{"(*Bulkhead).Submit", t.Name() + ".func"} {
		if !strings.Contains(stack, frame) {
			t.Errorf("the panic's stack has no %s frame:\n%s", frame, stack)
		}
	}
	// The only slot was freed on the way.
	if running, queued := b.Stats(); running != 0 || queued != 0 {
		t.Errorf("after the panic: %d running, %d queued; want none", running, queued)
	}
	if err := b.Submit(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Submit after a panic = %v, want the slot back", err)
	}
}

func TestBulkhead_GoexitInWorkFreesTheSlot(t *testing.T) {
	// runtime.Goexit, as t.FailNow calls, unwinds through Submit too.
	b, _ := newTestBulkhead(t, 1, 0) // not closed: a leaked slot would hang Close
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Submit(context.Background(), func(context.Context) error { runtime.Goexit(); return nil })
		t.Error("Submit returned after the work called runtime.Goexit")
	}()
	<-done
	if running, queued := b.Stats(); running != 0 || queued != 0 {
		t.Errorf("after runtime.Goexit: %d running, %d queued; want none", running, queued)
	}
}

// goroutineID is the number in the first line of the current goroutine's
// stack ("goroutine 18 [running]:"). For tests only. It may be called off
// the test's goroutine, hence Errorf and not Fatalf.
func goroutineID(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, ok := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	if !ok || id == "" {
		t.Errorf("no goroutine number in %q", buf)
		return "?"
	}
	return id
}

func TestBulkhead_RunsTheWorkOnTheCallersGoroutine(t *testing.T) {
	b, _ := newTestBulkhead(t, 1, 1)
	defer b.Close(context.Background())
	// submit calls Submit and reports the goroutines of caller and work.
	submit := func() (caller, callee string) {
		caller = goroutineID(t)
		if err := b.Submit(context.Background(), func(context.Context) error {
			callee = goroutineID(t)
			return nil
		}); err != nil {
			t.Error(err)
		}
		return caller, callee
	}

	// With a slot free.
	if caller, callee := submit(); callee != caller {
		t.Errorf("with a slot free, the work ran on goroutine %q, its caller is %q", callee, caller)
	}
	// After waiting in line for a slot.
	release := make(chan struct{})
	wg := occupy(t, b, 1, 0, release)
	type goroutines struct{ caller, callee string }
	submitted := make(chan goroutines)
	go func() {
		caller, callee := submit()
		submitted <- goroutines{caller, callee}
	}()
	waitFor(t, func() bool { _, queued := b.Stats(); return queued == 1 })
	close(release)
	if g := <-submitted; g.callee != g.caller {
		t.Errorf("after waiting, the work ran on goroutine %q, its caller is %q", g.callee, g.caller)
	}
	wg.Wait()
}

func TestBulkhead_FreeSlotAllocatesNothing(t *testing.T) {
	b, _ := newTestBulkhead(t, 1, 0)
	defer b.Close(context.Background())
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	if allocs := testing.AllocsPerRun(1000, func() { _ = b.Submit(ctx, fn) }); allocs != 0 {
		t.Errorf("Submit with a slot free allocates %v times, want 0", allocs)
	}
}

func TestBulkhead_FreedSlotGoesToTheOldestWaiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 5
		b, _ := newTestBulkhead(t, 1, n)
		defer b.Close(context.Background())
		var mu sync.Mutex
		var order []string
		record := func(who string) func(context.Context) error {
			return func(context.Context) error {
				mu.Lock()
				defer mu.Unlock()
				order = append(order, who)
				return nil
			}
		}

		// This goroutine holds the only slot while n callers get in line,
		// one after the other.
		var wg sync.WaitGroup
		err := b.Submit(context.Background(), func(context.Context) error {
			for i := range n {
				wg.Go(func() {
					if err := b.Submit(context.Background(), record(strconv.Itoa(i))); err != nil {
						t.Errorf("waiter %d: %v", i, err)
					}
				})
				synctest.Wait() // waiter i is in line before waiter i+1 comes
				if _, queued := b.Stats(); queued != i+1 {
					t.Fatalf("%d waiting after %d came, want %d", queued, i+1, i+1)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// The slot went straight to the oldest waiter, awake or not: a call
		// arriving now finds it taken and gets in line behind the others.
		if running, queued := b.Stats(); running != 1 || queued != n-1 {
			t.Errorf("once the holder returned: %d running, %d waiting; want 1 and %d", running, queued, n-1)
		}
		if err := b.Submit(context.Background(), record("late")); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		want := []string{"0", "1", "2", "3", "4", "late"}
		if strings.Join(order, " ") != strings.Join(want, " ") {
			t.Errorf("ran in the order %v, want %v", order, want)
		}
	})
}

func TestBulkhead_SlotHandedToAWaiterThatGaveUpIsPassedOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 1, 2)
		defer b.Close(context.Background())
		// The first waiter's context ends, and the slot is handed to it
		// before it can leave the line.
		sawCancel, handedOver := make(chan struct{}), make(chan struct{})
		b.afterCancel = func() { close(sawCancel); <-handedOver }
		ctx, cancel := context.WithCancel(context.Background())
		var ranCancelled, ranNext atomic.Bool
		var wg sync.WaitGroup
		err := b.Submit(context.Background(), func(context.Context) error {
			wg.Go(func() {
				err := b.Submit(ctx, func(context.Context) error { ranCancelled.Store(true); return nil })
				if !errors.Is(err, context.Canceled) {
					t.Errorf("the waiter that gave up: Submit = %v, want context.Canceled", err)
				}
			})
			synctest.Wait()
			wg.Go(func() {
				if err := b.Submit(context.Background(), func(context.Context) error { ranNext.Store(true); return nil }); err != nil {
					t.Errorf("the next waiter: %v", err)
				}
			})
			synctest.Wait()
			cancel()
			<-sawCancel
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if running, queued := b.Stats(); running != 1 || queued != 1 {
			t.Errorf("slot handed to the waiter that gave up: %d running, %d waiting; want 1 and 1", running, queued)
		}
		close(handedOver)
		wg.Wait()
		if ranCancelled.Load() {
			t.Error("the work of the waiter that gave up ran")
		}
		if !ranNext.Load() {
			t.Error("the slot was not passed on to the next waiter")
		}
		if running, queued := b.Stats(); running != 0 || queued != 0 {
			t.Errorf("at the end: %d running, %d waiting; want none", running, queued)
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
		synctest.Wait() // all five accepted: two running, three waiting
		if running, queued := b.Stats(); running != 2 || queued != 3 {
			t.Fatalf("%d running, %d waiting; want 2 and 3", running, queued)
		}
		if err := b.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if done.Load() != 5 {
			t.Fatalf("Close returned with %d of 5 accepted calls done", done.Load())
		}
		if running, queued := b.Stats(); running != 0 || queued != 0 {
			t.Errorf("after Close: %d running, %d waiting; want none", running, queued)
		}
		wg.Wait()
		if err := b.Submit(context.Background(), func(context.Context) error { return nil }); !errors.Is(err, ErrBulkheadClosed) {
			t.Errorf("Submit after Close = %v, want ErrBulkheadClosed", err)
		}
	})
}

func TestBulkhead_CloseGivesUpAtItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := newTestBulkhead(t, 1, 1)
		release := make(chan struct{})
		wg := occupy(t, b, 1, 1, release)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := b.Close(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close with stuck work = %v, want the deadline", err)
		}
		if !strings.Contains(err.Error(), "dep") {
			t.Errorf("Close's error %q does not name the bulkhead", err)
		}
		// What was abandoned, for the shutdown's log.
		if running, queued := b.Stats(); running != 1 || queued != 1 {
			t.Errorf("after Close gave up: %d running, %d waiting; want 1 and 1", running, queued)
		}
		if err := b.Submit(context.Background(), func(context.Context) error { return nil }); !errors.Is(err, ErrBulkheadClosed) {
			t.Errorf("Submit after Close = %v, want ErrBulkheadClosed", err)
		}
		// The abandoned calls still finish, the waiting one included, and
		// a second Close then finds the bulkhead drained.
		close(release)
		wg.Wait()
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("Close once drained = %v", err)
		}
	})
}
