package resilience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var (
	errServer = errors.New("503 from dependency")
	errClient = errors.New("404 from dependency")
)

// classifyTest treats errClient as the dependency being fine.
func classifyTest(err error) Outcome {
	if errors.Is(err, errClient) {
		return Success
	}
	return Failure
}

var defaultBreaker = BreakerSettings{
	Name: "dep", Window: 10 * time.Second, MinRequests: 10, FailureRatio: 0.5,
	OpenTimeout: 30 * time.Second, HalfOpenProbes: 3,
}

func newTestBreaker(t *testing.T, s BreakerSettings) (*Breaker, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	b, err := NewBreaker(s, classifyTest, reg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return b, reg, &logs
}

// calls runs n calls returning err and reports how many reached fn.
func calls(b *Breaker, n int, err error) (reached int) {
	for range n {
		_ = b.Execute(context.Background(), func(context.Context) error {
			reached++
			return err
		})
	}
	return reached
}

func TestBreaker_TripsOnFailureRatioOverMinimumCalls(t *testing.T) {
	tests := []struct {
		name      string
		successes int
		failures  int
		wantState string
	}{
		{"below the minimum number of calls", 0, 9, "closed"},
		{"at the minimum, all failing", 0, 10, "open"},
		{"at the ratio", 5, 5, "open"},
		{"below the ratio", 6, 4, "closed"},
		{"many calls, steady 40% failures", 60, 40, "closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b, _, _ := newTestBreaker(t, defaultBreaker)
				// Spread the failures evenly (Bresenham), so that no
				// prefix of the sequence fails more often than the whole.
				total := tt.successes + tt.failures
				for i := range total {
					if (i+1)*tt.failures/total > i*tt.failures/total {
						calls(b, 1, errServer)
					} else {
						calls(b, 1, nil)
					}
				}
				if got := b.State(); got != tt.wantState {
					t.Fatalf("state %s, want %s", got, tt.wantState)
				}
			})
		})
	}
}

func TestBreaker_OpenFailsFastWithoutCallingTheDependency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, reg, logs := newTestBreaker(t, defaultBreaker)
		calls(b, 10, errServer)
		err := b.Execute(context.Background(), func(context.Context) error {
			t.Fatal("an open breaker called the dependency")
			return nil
		})
		if !errors.Is(err, ErrBreakerOpen) {
			t.Fatalf("err = %v, want ErrBreakerOpen", err)
		}
		if got := metricValue(t, reg, "breaker_state", map[string]string{"name": "dep"}); got != 2 {
			t.Errorf("breaker_state = %v, want 2 (open)", got)
		}
		if !strings.Contains(logs.String(), "from=closed to=open") {
			t.Errorf("no log line for the state change: %s", logs)
		}
	})
}

func TestBreaker_WindowForgetsOldFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _, _ := newTestBreaker(t, defaultBreaker)
		calls(b, 9, errServer)
		time.Sleep(11 * time.Second) // the window rolls past them
		calls(b, 9, errServer)
		if got := b.State(); got != "closed" {
			t.Fatalf("state %s: failures older than the window still counted", got)
		}
		calls(b, 1, errServer) // 10 within the window now
		if got := b.State(); got != "open" {
			t.Fatalf("state %s, want open", got)
		}
	})
}

func TestBreaker_HalfOpenLimitsProbesThenRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, reg, _ := newTestBreaker(t, defaultBreaker)
		calls(b, 10, errServer)
		time.Sleep(defaultBreaker.OpenTimeout + time.Millisecond)
		if got := b.State(); got != "half-open" {
			t.Fatalf("state %s after the open timeout, want half-open", got)
		}

		// Three slow probes take every half-open slot...
		release := make(chan struct{})
		var wg sync.WaitGroup
		for range defaultBreaker.HalfOpenProbes {
			wg.Go(func() {
				_ = b.Execute(context.Background(), func(context.Context) error {
					<-release
					return nil
				})
			})
		}
		synctest.Wait()
		// ...so a fourth is refused without calling the dependency.
		if reached := calls(b, 1, nil); reached != 0 {
			t.Fatal("a call beyond the half-open probes reached the dependency")
		}
		close(release)
		wg.Wait()
		if got := b.State(); got != "closed" {
			t.Fatalf("state %s after %d successful probes, want closed", got, defaultBreaker.HalfOpenProbes)
		}
		// closed→open, open→half-open, half-open→closed once each; every
		// transition is exported from zero, so the fourth shows 0.
		want := fmt.Sprintf(`
# HELP breaker_transitions_total Circuit breaker state changes, by previous and new state.
# TYPE breaker_transitions_total counter
breaker_transitions_total{from="closed",name=%[1]q,to="open"} 1
breaker_transitions_total{from="half-open",name=%[1]q,to="closed"} 1
breaker_transitions_total{from="half-open",name=%[1]q,to="open"} 0
breaker_transitions_total{from="open",name=%[1]q,to="half-open"} 1
`, defaultBreaker.Name)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "breaker_transitions_total"); err != nil {
			t.Error(err)
		}
	})
}

func TestBreaker_OpenWhileHalfOpenWithEveryProbeTaken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _, _ := newTestBreaker(t, defaultBreaker)
		calls(b, 10, errServer)
		if !b.Open() {
			t.Fatal("Open() = false with the breaker open")
		}
		time.Sleep(defaultBreaker.OpenTimeout + time.Millisecond)

		// Half-open, Open() answers whether Execute would refuse a call:
		// not while a probe slot is free, yes once every one is taken.
		release := make(chan struct{})
		var wg sync.WaitGroup
		for i := range defaultBreaker.HalfOpenProbes {
			if b.Open() {
				t.Fatalf("Open() = true half-open with %d of %d probes taken", i, defaultBreaker.HalfOpenProbes)
			}
			wg.Go(func() {
				_ = b.Execute(context.Background(), func(context.Context) error {
					<-release
					return nil
				})
			})
			synctest.Wait()
		}
		if !b.Open() {
			t.Error("Open() = false half-open with every probe taken, though Execute would refuse")
		}
		if reached := calls(b, 1, nil); reached != 0 {
			t.Fatal("a call beyond the half-open probes reached the dependency")
		}
		close(release)
		wg.Wait()
		if b.Open() || b.State() != "closed" {
			t.Errorf("Open() = %v in state %s after the probes succeeded, want false and closed", b.Open(), b.State())
		}
	})
}

func TestBreaker_FailedProbeReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _, _ := newTestBreaker(t, defaultBreaker)
		calls(b, 10, errServer)
		time.Sleep(defaultBreaker.OpenTimeout + time.Millisecond)
		calls(b, 1, errServer)
		if got := b.State(); got != "open" {
			t.Fatalf("state %s after a failed probe, want open", got)
		}
	})
}

func TestBreaker_CallerCancellationIsNeitherSuccessNorFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _, _ := newTestBreaker(t, defaultBreaker)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		calls(b, 5, errServer)
		for range 20 {
			_ = b.Execute(ctx, func(ctx context.Context) error { return ctx.Err() })
		}
		// Counted as failures, the cancellations would have tripped it;
		// counted as successes, they would keep it closed below.
		if got := b.State(); got != "closed" {
			t.Fatalf("state %s after cancellations: they were counted as failures", got)
		}
		calls(b, 5, errServer)
		if got := b.State(); got != "open" {
			t.Fatalf("state %s after 10 failures and 20 cancellations: cancellations were counted as successes", got)
		}
	})
}

func TestBreaker_ClientErrorsAreNotFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _, _ := newTestBreaker(t, defaultBreaker)
		calls(b, 50, errClient)
		if got := b.State(); got != "closed" {
			t.Fatalf("state %s: 4xx answers tripped the breaker", got)
		}
	})
}

func TestNewBreaker_RejectsBadSettings(t *testing.T) {
	bad := defaultBreaker
	bad.FailureRatio = 1.5
	if _, err := NewBreaker(bad, classifyTest, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Fatal("NewBreaker accepted a failure ratio of 1.5")
	}
}

// metricValue returns the summed value of the named gauge or counter
// series in reg whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}
