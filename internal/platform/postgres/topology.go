package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Topology is what a service knows of its Postgres servers: which one
// takes its writes now, and how stale the read replica is. It probes both
// every ProbeInterval, and routes reads that may be stale: to the replica
// while its staleness is within the bound, else to the primary.
//
// Staleness is measured against the primary, not from the replica's own
// view (a replica cut off from its primary has replayed all it received,
// and would call itself current): each probe reads the primary's WAL
// position at a time T, then asks the replica whether it has replayed that
// far. If it has, the replica holds every commit made before T; a read
// sent to it at time now misses at most the commits of (T, now]. Reads go
// to the replica only while now - T, for the last such T, is within the
// bound: exactly the bound, whatever happens to the probes. A replica that
// stops answering, or falls behind, stops receiving reads within the bound.
type Topology struct {
	primary, replica *sql.DB
	maxLag           time.Duration
	interval         time.Duration
	log              *slog.Logger
	now              func() time.Time // tests replace it

	// writerPosition returns the primary's WAL position and the server's
	// address:port; replayedTo reports whether the replica has replayed up
	// to a position. Tests replace them.
	writerPosition func(ctx context.Context) (lsn, server string, err error)
	replayedTo     func(ctx context.Context, lsn string) (bool, error)

	freshAt atomic.Int64 // unix nanoseconds: the replica held every commit made before; 0: never

	mu         sync.Mutex
	writer     string    // "address:port" of the server taking writes, as last seen
	writerSeen time.Time // when

	lagGauge   prometheus.Gauge
	reads      *prometheus.CounterVec
	writerInfo *prometheus.GaugeVec
}

// ProbeInterval is how often Topology probes.
const ProbeInterval = 250 * time.Millisecond

// NewTopology returns the topology of primary and replica (nil without
// one), registering postgres_replica_lag_seconds,
// postgres_reads_total{pool} and postgres_writer_info{server}.
func NewTopology(primary, replica *sql.DB, maxLag time.Duration, reg prometheus.Registerer, log *slog.Logger) (*Topology, error) {
	if maxLag <= 0 {
		return nil, fmt.Errorf("replica max lag %v: want a positive duration", maxLag)
	}
	t := &Topology{
		primary: primary, replica: replica, maxLag: maxLag, interval: ProbeInterval, log: log, now: time.Now,
		lagGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "postgres_replica_lag_seconds",
			Help: "How stale the read replica may be, at the last probe: the time since the primary's position it has replayed was read (0 without a replica).",
		}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postgres_reads_total",
			Help: "Reads that may be stale, by the pool they were sent to: replica, or primary while the replica lags or is unknown.",
		}, []string{"pool"}),
		writerInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "postgres_writer_info",
			Help: "1 for the Postgres server (address:port) that takes this process's writes, as last seen.",
		}, []string{"server"}),
	}
	t.writerPosition, t.replayedTo = t.queryWriter, t.queryReplayed
	t.reads.WithLabelValues("replica")
	t.reads.WithLabelValues("primary")
	for _, c := range []prometheus.Collector{t.lagGauge, t.reads, t.writerInfo} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("postgres topology metrics: %w", err)
		}
	}
	return t, nil
}

// Primary is the pool for writes, and for reads that must not be stale.
func (t *Topology) Primary() *sql.DB { return t.primary }

// ReadPool is the pool for a read that may be stale by up to the bound:
// the replica while its last measurement is recent and within the bound,
// else the primary.
func (t *Topology) ReadPool() *sql.DB {
	if t.replica == nil || !t.replicaFresh() {
		t.reads.WithLabelValues("primary").Inc()
		return t.primary
	}
	t.reads.WithLabelValues("replica").Inc()
	return t.replica
}

func (t *Topology) replicaFresh() bool {
	at := t.freshAt.Load()
	return at != 0 && t.now().Sub(time.Unix(0, at)) <= t.maxLag
}

// Writer returns the server that took the last successful probe's
// write-side query, as address:port ("" before the first), and when that
// probe ran: during a failover the last writer seen is the old one, and
// its age says so.
func (t *Topology) Writer() (server string, seen time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.writer, t.writerSeen
}

// Run measures every probe interval until ctx ends.
func (t *Topology) Run(ctx context.Context) {
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		t.Probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Probe measures once: which server takes writes, and whether the
// replica has caught up with it. Each query gets a probe interval of its
// own, so a replica that hangs cannot hide the writer. A failed probe
// changes nothing: the last fresh time ages.
func (t *Topology) Probe(ctx context.Context) {
	at := t.now()
	pctx, cancel := context.WithTimeout(ctx, t.interval)
	lsn, server, err := t.writerPosition(pctx)
	cancel()
	if err != nil {
		return
	}
	t.noteWriter(server, at)
	if t.replica == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, t.interval)
	caught, err := t.replayedTo(rctx, lsn)
	cancel()
	if err == nil && caught {
		t.freshAt.Store(at.UnixNano())
	}
	if fresh := t.freshAt.Load(); fresh != 0 {
		t.lagGauge.Set(t.now().Sub(time.Unix(0, fresh)).Seconds())
	}
}

func (t *Topology) noteWriter(server string, at time.Time) {
	t.mu.Lock()
	previous := t.writer
	t.writer, t.writerSeen = server, at
	t.mu.Unlock()
	if server != previous {
		t.writerInfo.Reset()
		t.writerInfo.WithLabelValues(server).Set(1)
		if previous != "" {
			t.log.Warn("postgres: another server takes writes now", "server", server, "previous", previous)
		}
	}
}

func (t *Topology) queryWriter(ctx context.Context) (lsn, server string, err error) {
	err = t.primary.QueryRowContext(ctx, `
		SELECT pg_current_wal_lsn()::text,
		       coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port')`).Scan(&lsn, &server)
	return lsn, server, err
}

// queryReplayed asks the replica whether it has replayed up to lsn. A
// server that is not in recovery (a replica promoted, or the primary
// itself) has everything it holds.
func (t *Topology) queryReplayed(ctx context.Context, lsn string) (bool, error) {
	var caught bool
	err := t.replica.QueryRowContext(ctx, `
		SELECT NOT pg_is_in_recovery() OR coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)`, lsn).Scan(&caught)
	return caught, err
}
