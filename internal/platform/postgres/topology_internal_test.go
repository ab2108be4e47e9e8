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

// fakeServers are a primary whose WAL position and a replica whose replay
// the test sets, and a clock it moves.
type fakeServers struct {
	mu         sync.Mutex
	now        time.Time
	primaryErr error
	caughtUp   bool
	replicaErr error
	asked      []string // positions the replica was asked about
}

func (f *fakeServers) writer(context.Context) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return "0/" + f.now.Format("150405.000"), "10.0.0.1:5432", f.primaryErr
}

func (f *fakeServers) replayed(_ context.Context, lsn string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, lsn)
	return f.caughtUp, f.replicaErr
}

func (f *fakeServers) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeServers) set(fn func(f *fakeServers)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// newTestTopology returns a topology over two distinct pools that connect
// nowhere, probing through f.
func newTestTopology(t *testing.T, f *fakeServers, maxLag time.Duration) (*Topology, *sql.DB, *sql.DB) {
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
	top, err := NewTopology(pools[0], pools[1], maxLag, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	top.writerPosition, top.replayedTo, top.now = f.writer, f.replayed, f.clock
	return top, pools[0], pools[1]
}

func TestTopology_ReadsGoToTheReplicaOnlyWithinTheStalenessBound(t *testing.T) {
	f := &fakeServers{now: time.Unix(1_000_000, 0)}
	top, primary, replica := newTestTopology(t, f, time.Second)
	ctx := context.Background()

	if top.ReadPool() != primary {
		t.Error("before any probe, a read went to the replica")
	}
	f.set(func(f *fakeServers) { f.caughtUp = true })
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("the replica has replayed the primary's position: the read did not go to it")
	}
	if len(f.asked) != 1 || f.asked[0] == "" {
		t.Errorf("the replica was asked about %q, want the primary's position", f.asked)
	}

	// The replica stops catching up (cut off from its primary, or slow):
	// it answers, but has not replayed the newer positions.
	f.set(func(f *fakeServers) { f.caughtUp = false; f.now = f.now.Add(600 * time.Millisecond) })
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("600ms since the replica was last current, bound 1s: the read did not go to it")
	}
	f.set(func(f *fakeServers) { f.now = f.now.Add(400 * time.Millisecond) })
	if top.ReadPool() != replica {
		t.Error("exactly the bound: the read did not go to the replica")
	}
	if got := testutil.ToFloat64(top.lagGauge); got != 0.6 {
		t.Errorf("postgres_replica_lag_seconds = %v at the last probe, want 0.6", got)
	}
	f.set(func(f *fakeServers) { f.now = f.now.Add(time.Millisecond) })
	if top.ReadPool() != primary {
		t.Error("past the bound: a read went to a replica that may miss newer commits")
	}

	// Caught up again.
	f.set(func(f *fakeServers) { f.caughtUp = true })
	top.Probe(ctx)
	if top.ReadPool() != replica {
		t.Error("caught up again: the read did not go to the replica")
	}
	// The replica stops answering: the same ageing.
	f.set(func(f *fakeServers) {
		f.replicaErr = errors.New("connection refused")
		f.now = f.now.Add(1001 * time.Millisecond)
	})
	top.Probe(ctx)
	if top.ReadPool() != primary {
		t.Error("the replica has not answered for longer than the bound: a read still went to it")
	}
}

// A primary that does not answer gives no position to compare with: the
// replica cannot be shown current, and ages out like any other.
func TestTopology_WithoutThePrimarysPositionTheReplicaAgesOut(t *testing.T) {
	f := &fakeServers{now: time.Unix(1_000_000, 0), caughtUp: true}
	top, primary, replica := newTestTopology(t, f, time.Second)
	top.Probe(context.Background())
	if top.ReadPool() != replica {
		t.Fatal("setup: the read did not go to a current replica")
	}
	f.set(func(f *fakeServers) { f.primaryErr = errors.New("primary gone"); f.now = f.now.Add(2 * time.Second) })
	top.Probe(context.Background())
	if top.ReadPool() != primary {
		t.Error("2s without a comparison, bound 1s: a read went to the replica")
	}
}

func TestTopology_WithoutAReplicaEveryReadGoesToThePrimary(t *testing.T) {
	f := &fakeServers{now: time.Unix(1_000_000, 0), caughtUp: true}
	top, primary, _ := newTestTopology(t, f, time.Second)
	top.replica = nil
	top.Probe(context.Background())
	if top.ReadPool() != primary {
		t.Error("no replica, yet a read went elsewhere than the primary")
	}
	if got, seen := top.Writer(); got != "10.0.0.1:5432" || !seen.Equal(f.now) {
		t.Errorf("writer %q seen at %v, want the primary's address seen at the probe, %v", got, seen, f.now)
	}
	// A probe that fails keeps the last writer, and its age grows.
	f.set(func(f *fakeServers) { f.primaryErr = errors.New("connection refused"); f.now = f.now.Add(time.Minute) })
	top.Probe(context.Background())
	if got, seen := top.Writer(); got != "10.0.0.1:5432" || f.now.Sub(seen) != time.Minute {
		t.Errorf("after a failed probe: writer %q seen %v before now; want the last one, a minute old", got, f.now.Sub(seen))
	}
}

func TestNewTopology_RefusesANonPositiveBound(t *testing.T) {
	if _, err := NewTopology(nil, nil, 0, prometheus.NewRegistry(), nil); err == nil {
		t.Error("a zero lag bound was accepted")
	}
}
