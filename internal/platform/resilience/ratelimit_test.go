package resilience

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// clock is a settable time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestLimiter(t *testing.T, perSecond float64, burst, maxKeys int) (*KeyedLimiter, *clock, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := NewKeyedLimiter(LimiterSettings{Name: "clients", PerSecond: perSecond, Burst: burst, MaxKeys: maxKeys}, reg)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return l.WithClock(c.now), c, reg
}

func TestKeyedLimiter_SpendsTheBurstThenRefusesWithHeaders(t *testing.T) {
	l, c, _ := newTestLimiter(t, 10, 20, 1000)
	for i := range 20 {
		d := l.Allow("client_a")
		if !d.Allowed || d.Remaining != 19-i || d.Limit != 20 {
			t.Fatalf("request %d: %+v; want allowed with %d remaining", i+1, d, 19-i)
		}
	}
	d := l.Allow("client_a")
	if d.Allowed {
		t.Fatal("request 21 allowed beyond a burst of 20")
	}
	if d.RetryAfter != 100*time.Millisecond || d.Reset != 2*time.Second {
		t.Errorf("RetryAfter %s, Reset %s; want 100ms (one token at 10/s) and 2s (20 tokens)", d.RetryAfter, d.Reset)
	}
	h := http.Header{}
	d.SetHeaders(h)
	for name, want := range map[string]string{
		"RateLimit-Limit": "20", "RateLimit-Remaining": "0", "RateLimit-Reset": "2", "Retry-After": "1",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	c.advance(100 * time.Millisecond)
	if d := l.Allow("client_a"); !d.Allowed {
		t.Errorf("refused after the Retry-After time: %+v", d)
	}
	okHeaders := http.Header{}
	l.Allow("client_b").SetHeaders(okHeaders)
	if okHeaders.Get("Retry-After") != "" || okHeaders.Get("RateLimit-Remaining") != "19" {
		t.Errorf("allowed request headers: %v", okHeaders)
	}
}

func TestKeyedLimiter_KeysHaveTheirOwnBuckets(t *testing.T) {
	l, _, _ := newTestLimiter(t, 1, 2, 1000)
	l.Allow("noisy")
	l.Allow("noisy")
	if l.Allow("noisy").Allowed {
		t.Fatal("noisy was not limited")
	}
	if !l.Allow("quiet").Allowed {
		t.Error("quiet was limited because of noisy")
	}
}

func TestKeyedLimiter_EvictsOnlyBucketsThatAreFullAgain(t *testing.T) {
	l, c, reg := newTestLimiter(t, 10, 20, 100_000) // full again 2s after use
	// newcomers inserts n new keys: enough that every shard gets some,
	// and so gets a chance to evict (2000 over 32 shards: all, in practice).
	newcomers := func(prefix string) {
		for i := range 2000 {
			l.Allow(fmt.Sprint(prefix, i))
		}
	}
	idleEvictions := func() float64 {
		return metricValue(t, reg, "ratelimit_evictions_total", map[string]string{"reason": "idle"})
	}

	for range 20 {
		l.Allow("spender") // empties its bucket
	}
	c.advance(time.Second)
	newcomers("a-")
	if got := idleEvictions(); got != 0 {
		t.Fatalf("%v evictions of buckets used 1s ago, not yet full again", got)
	}
	if d := l.Allow("spender"); d.Remaining != 9 {
		t.Fatalf("spender has %d tokens left, want 9 (10 refilled in 1s, 1 spent): its bucket was reset", d.Remaining)
	}

	c.advance(2 * time.Second) // now every bucket is full again
	newcomers("b-")
	if got := idleEvictions(); got != 2001 { // the a- newcomers and spender
		t.Errorf("%v idle evictions, want 2001", got)
	}
	if got := metricValue(t, reg, "ratelimit_evictions_total", map[string]string{"reason": "capacity"}); got != 0 {
		t.Errorf("%v capacity evictions, want 0", got)
	}
	if l.Len() != 2000 {
		t.Errorf("%d buckets kept, want the 2000 b- newcomers", l.Len())
	}
}

func TestKeyedLimiter_ReadsTheClockUnderTheKeysLock(t *testing.T) {
	// Two calls for one key that read the clock before taking the lock can
	// reach the bucket in the opposite order, handing x/time/rate a time
	// before its last one, which makes it grant too much. Whether that
	// race happens in a test run is luck; that its precondition cannot
	// happen is certain: the clock is only read with the lock held.
	l, c, _ := newTestLimiter(t, 10, 20, 1000)
	const key = "client_a"
	reads := 0
	l.WithClock(func() time.Time {
		reads++
		if l.shard(key).mu.TryLock() {
			l.shard(key).mu.Unlock()
			t.Error("the clock was read without the key's shard locked")
		}
		return c.now()
	})
	l.Allow(key)
	if reads == 0 {
		t.Fatal("Allow did not read the clock")
	}
}

func TestKeyedLimiter_AMillionClientsKeepMemoryBounded(t *testing.T) {
	const maxKeys = 10_000
	l, _, _ := newTestLimiter(t, 100, 200, maxKeys)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for i := range maxKeys {
		l.Allow(fmt.Sprint("client-", i))
	}
	atCapacity := heap()
	for i := maxKeys; i < 1_000_000; i++ {
		l.Allow(fmt.Sprint("client-", i))
	}
	afterMillion := heap()
	t.Logf("heap with %d buckets: %d KiB; after 1,000,000 distinct clients: %d KiB; buckets kept: %d",
		maxKeys, atCapacity>>10, afterMillion>>10, l.Len())
	if l.Len() > maxKeys {
		t.Errorf("%d buckets kept, more than the %d allowed", l.Len(), maxKeys)
	}
	// A million buckets would be ~100× the heap of ten thousand.
	if afterMillion > atCapacity+8<<20 {
		t.Errorf("heap grew from %d KiB to %d KiB: not bounded", atCapacity>>10, afterMillion>>10)
	}
}

func TestEgressLimiter_WaitsOnlyWithinTheCallersDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := NewEgressLimiter(EgressSettings{Name: "provider", PerSecond: 1, Burst: 1}, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}

		// The next token is 1s away: a caller with 100ms left fails at once.
		short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := e.Wait(short); !errors.Is(err, ErrRateLimited) {
			t.Fatalf("err = %v, want ErrRateLimited", err)
		}
		if waited := time.Since(start); waited != 0 {
			t.Errorf("a doomed wait took %s, want none", waited)
		}

		// A caller with time to spare waits for the token.
		long, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel2()
		start = time.Now()
		if err := e.Wait(long); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited != time.Second {
			t.Errorf("waited %s for the next token, want 1s", waited)
		}
	})
}
