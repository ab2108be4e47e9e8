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
// takes its writes now, and how far the read replica lags. It measures
// both every ProbeInterval, and routes reads that may be stale: to the
// replica while its lag is known and within the bound, else to the
// primary. A reader therefore never sees data older than the bound plus
// one probe interval, and a replica that stops answering, or whose lag
// cannot be measured, stops receiving reads within ProbeInterval ×
// unknownAfter.
type Topology struct {
	primary, replica *sql.DB
	maxLag           time.Duration
	interval         time.Duration
	log              *slog.Logger
	now              func() time.Time // tests replace it

	// measureLag returns the replica's replay lag; tests replace it.
	measureLag func(ctx context.Context) (time.Duration, error)

	lagNanos   atomic.Int64 // the last measured lag
	measuredAt atomic.Int64 // unix nanoseconds of that measurement; 0: never

	mu     sync.Mutex
	writer string // "address:port" of the server taking writes, as last seen

	lagGauge   prometheus.Gauge
	reads      *prometheus.CounterVec
	writerInfo *prometheus.GaugeVec
}

// ProbeInterval is how often Topology measures.
const ProbeInterval = 250 * time.Millisecond

// unknownAfter is how many probe intervals a measurement stays valid.
const unknownAfter = 4

// replicaLag is the replica's replay lag in seconds: zero when it has
// replayed everything it received (an idle primary sends nothing, which
// is not lag), and zero on a server that is not in recovery.
const replicaLag = `
	SELECT CASE
	    WHEN NOT pg_is_in_recovery() THEN 0
	    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
	    ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
	END`

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
			Help: "The read replica's replay lag at the last measurement (0 without a replica).",
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
	t.measureLag = t.queryLag
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
	at := t.measuredAt.Load()
	if at == 0 || t.now().Sub(time.Unix(0, at)) > unknownAfter*t.interval {
		return false
	}
	return time.Duration(t.lagNanos.Load()) <= t.maxLag
}

// Writer returns the server that took the last probe's write-side query,
// as address:port ("" before the first).
func (t *Topology) Writer() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.writer
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

// Probe measures once: the replica's lag, and which server takes writes.
// A failed measurement leaves the last one to age out.
func (t *Topology) Probe(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, t.interval)
	defer cancel()
	if t.replica != nil {
		if lag, err := t.measureLag(ctx); err == nil {
			t.lagNanos.Store(int64(lag))
			t.measuredAt.Store(t.now().UnixNano())
			t.lagGauge.Set(lag.Seconds())
		}
	}
	var server string
	err := t.primary.QueryRowContext(ctx,
		`SELECT coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port')`).Scan(&server)
	if err != nil {
		return
	}
	t.mu.Lock()
	previous := t.writer
	t.writer = server
	t.mu.Unlock()
	if server != previous {
		t.writerInfo.Reset()
		t.writerInfo.WithLabelValues(server).Set(1)
		if previous != "" {
			t.log.Warn("postgres: another server takes writes now", "server", server, "previous", previous)
		}
	}
}

func (t *Topology) queryLag(ctx context.Context) (time.Duration, error) {
	var seconds float64
	if err := t.replica.QueryRowContext(ctx, replicaLag).Scan(&seconds); err != nil {
		return 0, err
	}
	return time.Duration(seconds * float64(time.Second)), nil
}
