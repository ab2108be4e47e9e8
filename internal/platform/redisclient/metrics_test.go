package redisclient

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// The pool's statistics reach the registry under go-redis's own names,
// each as the pool counts it: five commands in a row dial one connection
// (a miss) and reuse it four times (hits), which is idle again after.
func TestNewPoolCollector_ExportsThePoolStatistics(t *testing.T) {
	rdb, err := New(Config{URL: testenv.NewRedis(t).URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	reg := prometheus.NewRegistry()
	if err := reg.Register(NewPoolCollector(rdb)); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := rdb.Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			got[f.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"redis_pool_hit_total":          4,
		"redis_pool_miss_total":         1,
		"redis_pool_timeout_total":      0,
		"redis_pool_conn_total_current": 1,
		"redis_pool_conn_idle_current":  1,
		"redis_pool_conn_stale_total":   0,
	}
	for name, w := range want {
		if v, ok := got[name]; !ok || v != w {
			t.Errorf("%s = %v (exported: %v), want %v", name, v, ok, w)
		}
	}
}
