package redisclient

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// poolCollector exports a client's connection pool statistics, read at
// each scrape. Its names are those of go-redis's own redisprometheus
// collector under the namespace "redis", so that dashboards and alerts
// written for either work with the other.
type poolCollector struct {
	stats                                      func() *redis.PoolStats
	hits, misses, timeouts, total, idle, stale *prometheus.Desc
}

// NewPoolCollector returns a collector of rdb's connection pool
// statistics: redis_pool_hit_total, redis_pool_miss_total,
// redis_pool_timeout_total, redis_pool_conn_total_current,
// redis_pool_conn_idle_current and redis_pool_conn_stale_total.
func NewPoolCollector(rdb *redis.Client) prometheus.Collector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("redis_pool_"+name, help, nil, nil)
	}
	return &poolCollector{
		stats:    rdb.PoolStats,
		hits:     desc("hit_total", "Times a free connection was found in the pool."),
		misses:   desc("miss_total", "Times no free connection was found in the pool, and one was dialled or waited for."),
		timeouts: desc("timeout_total", "Times waiting for a connection from the pool timed out."),
		total:    desc("conn_total_current", "Connections in the pool."),
		idle:     desc("conn_idle_current", "Idle connections in the pool."),
		stale:    desc("conn_stale_total", "Connections removed from the pool as stale."),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.hits, c.misses, c.timeouts, c.total, c.idle, c.stale} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: one reading of the pool's
// statistics, as they are now.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, m := range []struct {
		desc  *prometheus.Desc
		kind  prometheus.ValueType
		value uint32
	}{
		{c.hits, prometheus.CounterValue, s.Hits},
		{c.misses, prometheus.CounterValue, s.Misses},
		{c.timeouts, prometheus.CounterValue, s.Timeouts},
		{c.total, prometheus.GaugeValue, s.TotalConns},
		{c.idle, prometheus.GaugeValue, s.IdleConns},
		{c.stale, prometheus.CounterValue, s.StaleConns},
	} {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, float64(m.value))
	}
}
