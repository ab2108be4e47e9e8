package postgres

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeLag is a replica whose lag the test sets, and a clock it moves.
type fakeLag struct {
	mu  sync.Mutex
	lag time.Duration
	err error
	now time.Time
}

func (f *fakeLag) set(lag time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lag, f.err = lag, err
}

func (f *fakeLag) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func (f *fakeLag) measure(context.Context) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lag, f.err
}

func (f *fakeLag) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// newTestTopology returns a topology over two distinct (unconnected)
// pools, measuring lag through f. The primary's writer probe fails
// quietly: nothing listens at its address.
func newTestTopology(t *testing.T, f *fakeLag, maxLag time.Duration) (*Topology, *sql.DB, *sql.DB, *prometheus.Registry) {
	t.Helper()
	var pools [2]*sql.DB
	for i := range pools {
		p, err := Open("postgres://nobody:x@127.0.0.1:1/none?sslmode=disable&connect_timeout=1", PoolConfig{MaxOpenConns: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		pools[i] = p
	}
	reg := prometheus.NewRegistry()
	top, err := NewTopology(pools[0], pools[1], maxLag, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	top.measureLag, top.now = f.measure, f.clock
	return top, pools[0], pools[1], reg
}

func TestTopology_ReadsGoToTheReplicaOnlyWithinTheLagBound(t *testing.T) {
	f := &fakeLag{now: time.Unix(1_000_000, 0)}
	top, primary, replica, reg := newTestTopology(t, f, time.Second)
	ctx := context.Background()

	if top.ReadPool() != primary {
		t.Error("before any measurement, reads went to the replica")
	}
	f.set(200*time.Millisecond, nil)
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("lag 200ms, bound 1s: reads did not go to the replica")
	}
	if got := testutil.ToFloat64(top.lagGauge); got != 0.2 {
		t.Errorf("postgres_replica_lag_seconds = %v, want 0.2", got)
	}
	f.set(1500*time.Millisecond, nil)
	top.Probe(ctx)
	if top.ReadPool() != primary {
		t.Error("lag 1.5s, bound 1s: reads went to the replica")
	}
	f.set(time.Second, nil) // at the bound is within it
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("lag at the bound: reads did not go to the replica")
	}

	// The replica stops answering: its last measurement ages out.
	f.set(0, errors.New("connection refused"))
	f.advance(unknownAfter * ProbeInterval)
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("a measurement exactly unknownAfter intervals old was dropped early")
	}
	f.advance(time.Millisecond)
	if top.ReadPool() != primary {
		t.Error("lag unknown for longer than the bound allows: reads still went to the replica")
	}
	if n, err := testutil.GatherAndCount(reg, "postgres_reads_total"); err != nil || n != 2 {
		t.Errorf("postgres_reads_total series: %d, %v; want replica and primary", n, err)
	}
}

func TestTopology_WithoutAReplicaEveryReadGoesToThePrimary(t *testing.T) {
	f := &fakeLag{now: time.Unix(1_000_000, 0)}
	top, primary, _, _ := newTestTopology(t, f, time.Second)
	top.replica = nil
	top.Probe(context.Background())
	if top.ReadPool() != primary {
		t.Error("no replica, yet a read went elsewhere than the primary")
	}
}

func TestNewTopology_RefusesANonPositiveBound(t *testing.T) {
	if _, err := NewTopology(nil, nil, 0, prometheus.NewRegistry(), nil); err == nil {
		t.Error("a zero lag bound was accepted")
	}
}
