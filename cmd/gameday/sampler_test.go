package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// exposition is an instance's metrics page, with the provider's
// protections next to another dependency's, which the sampler must leave
// out where it asks for the provider's.
const exposition = `# TYPE payservice_retry_attempts_total counter
payservice_retry_attempts_total{name="provider",outcome="success"} 90
payservice_retry_attempts_total{name="provider",outcome="retried"} 8
payservice_retry_attempts_total{name="provider",outcome="final_attempts"} 3
payservice_retry_attempts_total{name="provider",outcome="final_budget"} 2
payservice_retry_attempts_total{name="provider",outcome="not_started"} 5
payservice_retry_attempts_total{name="redis",outcome="success"} 1000
payservice_retry_attempts_total{name="redis",outcome="retried"} 1000
# TYPE payservice_breaker_state gauge
payservice_breaker_state{name="provider"} 2
payservice_breaker_state{name="redis"} 1
# TYPE payservice_bulkhead_rejections_total counter
payservice_bulkhead_rejections_total{name="provider",reason="full"} 4
payservice_bulkhead_rejections_total{name="provider",reason="closed"} 1
# TYPE go_sql_wait_duration_seconds_total counter
go_sql_wait_duration_seconds_total{db_name="primary"} 1.5
go_sql_wait_duration_seconds_total{db_name="replica"} 0.25
payservice_untyped 7
`

// TestSum_AddsTheSeriesTheFilterKeeps checks sum over counters, gauges and
// untyped series, with each of the sampler's filters: the provider's
// retries, attempts and calls, and its breaker.
func TestSum_AddsTheSeriesTheFilterKeeps(t *testing.T) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		family string
		keep   func(*dto.Metric) bool
		want   float64
	}{
		{"every attempt outcome", metricRetries, nil, 2108},
		{"provider retries", metricRetries, retriesOnly, 8},
		{"provider attempts", metricRetries, attemptsOnly, 90 + 8 + 3 + 2},
		{"provider calls", metricRetries, callsOnly, 90 + 3 + 2},
		{"provider breaker", metricBreaker, providerOnly, 2},
		{"every breaker", metricBreaker, nil, 3},
		{"bulkhead rejections", metricBulkhead, nil, 5},
		{"pool wait, every pool", metricPoolWait, nil, 1.75},
		{"untyped", "payservice_untyped", nil, 7},
		{"a family the page lacks", metricEgress, nil, 0},
	}
	for _, tt := range tests {
		if got := sum(fams[tt.family], tt.keep); got != tt.want {
			t.Errorf("%s: sum = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestFilters_SelectTheProvidersSeriesByOutcome checks each filter on one
// series at a time: retries are the provider's attempts tried again,
// attempts every provider attempt made, calls the provider's last attempts
// (success or final_*), and none keeps another dependency's series.
func TestFilters_SelectTheProvidersSeriesByOutcome(t *testing.T) {
	type kept struct{ provider, retries, attempts, calls bool }
	tests := []struct {
		name, outcome string
		want          kept
	}{
		{"provider", "success", kept{true, false, true, true}},
		{"provider", "retried", kept{true, true, true, false}},
		{"provider", "final_attempts", kept{true, false, true, true}},
		{"provider", "final_deadline", kept{true, false, true, true}},
		{"provider", "not_started", kept{true, false, false, false}},
		{"redis", "success", kept{}},
		{"redis", "retried", kept{}},
		{"redis", "final_attempts", kept{}},
		{"", "retried", kept{}},
	}
	for _, tt := range tests {
		m := labelled(map[string]string{labelName: tt.name, "outcome": tt.outcome})
		got := kept{providerOnly(m), retriesOnly(m), attemptsOnly(m), callsOnly(m)}
		if got != tt.want {
			t.Errorf("name=%q outcome=%q: kept %+v, want %+v", tt.name, tt.outcome, got, tt.want)
		}
	}
}

// TestSampler_SumsTheProtectionsOfTheRunningInstances checks readings: the
// first scrape is the baseline (counters count from the run's start), then
// the instances' counter increments and breakers are added up, the
// balancer's readiness counted, an instance not running left out, and the
// provider's counts.
func TestSampler_SumsTheProtectionsOfTheRunningInstances(t *testing.T) {
	const baseline = "payservice_breaker_state{name=\"provider\"} 2\n"
	pageA, pageB := newMetricsPage(t, baseline), newMetricsPage(t, baseline)
	a, b := runningApp("a", pageA.URL), runningApp("b", pageB.URL)
	stopped := &app{name: "c", admin: newMetricsPage(t, exposition).URL} // its last process's address
	env := testEnv(a, b, stopped)
	setProbed(env.Balancer, a, ready, a.api)
	setProbed(env.Balancer, b, degraded, b.api)
	serve(t.Context(), env.Capacity)

	s := newSampler(env, time.Now())
	s.sample(t.Context())
	pageA.set(exposition)
	pageB.set(strings.ReplaceAll(exposition, `breaker_state{name="provider"} 2`, `breaker_state{name="provider"} 1`))
	s.sample(t.Context())
	readings, _ := s.take()
	if len(readings) != 2 {
		t.Fatalf("%d readings, want 2", len(readings))
	}
	if r := readings[0]; r.retries != 0 || r.attempts != 0 || r.calls != 0 || r.rejections != 0 || r.poolWaitSeconds != 0 {
		t.Errorf("the first reading counts %+v; want the baseline, all 0", r)
	}
	got := readings[1]
	want := protections{
		at:          got.at,
		breakerOpen: 1.5, // open on a, half-open on b
		retries:     16, attempts: 206, calls: 190,
		rejections: 10, poolWaitSeconds: 3.5,
		ready: 1, degraded: 1,
		providerCalls: 1,
	}
	if got != want {
		t.Errorf("reading = %+v\nwant      %+v", got, want)
	}
}

// TestSampler_AMissedScrapeLeavesAnInstancesProtectionsAsTheyWere checks a
// running instance whose metrics page fails to answer once: the timeline
// must not show its counters' whole totals as one step's rate when they
// come back (read as zeros, they would: 2020 retries/s here for 20), nor
// its open breaker as closing and opening again.
func TestSampler_AMissedScrapeLeavesAnInstancesProtectionsAsTheyWere(t *testing.T) {
	page := newMetricsPage(t, retriesPage(1000))
	a := runningApp("a", page.URL)
	env := testEnv(a)
	s := newSampler(env, time.Now())

	s.sample(t.Context())
	page.set("") // the scrape fails
	s.sample(t.Context())
	page.set(retriesPage(1010))
	s.sample(t.Context())

	readings, events := s.take()
	// Counted from the first scrape on: 0, still 0, then the 10 gained.
	if len(readings) != 3 || readings[0].retries != 0 || readings[2].retries != 10 {
		t.Fatalf("readings %+v, want 3 counting 0, 0 then 10 retries", readings)
	}
	for i := range readings {
		readings[i].at = time.Duration(i) * Step
	}
	x := &experiment{start: time.Now(), run: &Run{End: 2 * Step}, readings: readings}
	want := 10 / Step.Seconds() // 10 retries over the last Step
	for i, p := range timeline(x) {
		if p.Retries > want {
			t.Errorf("point %d: %v retries/s; the counters say at most %v", i, p.Retries, want)
		}
	}
	for _, e := range events {
		t.Errorf("event %q: the breaker stayed open", e.What)
	}
}

// labelled is a dto series with labels.
func labelled(labels map[string]string) *dto.Metric {
	m := &dto.Metric{Counter: &dto.Counter{Value: new(1.0)}}
	for name, value := range labels {
		m.Label = append(m.Label, &dto.LabelPair{Name: new(name), Value: new(value)})
	}
	return m
}

// retriesPage is a metrics page with an open provider breaker and n
// provider retries.
func retriesPage(n int) string {
	return fmt.Sprintf(`# TYPE payservice_breaker_state gauge
payservice_breaker_state{name="provider"} 2
# TYPE payservice_retry_attempts_total counter
payservice_retry_attempts_total{name="provider",outcome="retried"} %d
`, n)
}

// testEnv is an Env with apps behind a balancer and a provider nobody
// calls but the test: what the sampler reads.
func testEnv(apps ...*app) *Env {
	e := &Env{Capacity: newCapacity(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})), Balancer: newBalancer(), apps: apps}
	for _, a := range apps {
		e.Balancer.add(a)
	}
	return e
}

// metricsPage is an admin endpoint serving a metrics page the test sets;
// an empty page fails the scrape, as a broken connection does.
type metricsPage struct {
	*httptest.Server

	mu   sync.Mutex
	page string
}

func newMetricsPage(t *testing.T, page string) *metricsPage {
	t.Helper()
	p := &metricsPage{page: page}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		page := p.page
		p.mu.Unlock()
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		if page == "" {
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(page))
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *metricsPage) set(page string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.page = page
}

// TestSampler_ARestartedInstanceCountsFromZero checks an instance whose
// process was replaced between scrapes (a new address): its new counters
// are all increments, never a drop below the old process's totals, and
// the old totals are not counted again.
func TestSampler_ARestartedInstanceCountsFromZero(t *testing.T) {
	old, replacement := newMetricsPage(t, retriesPage(1000)), newMetricsPage(t, retriesPage(7))
	a := runningApp("a", old.URL)
	s := newSampler(testEnv(a), time.Now())
	s.sample(t.Context()) // the baseline: 1000 retries before the run
	old.set(retriesPage(1004))
	s.sample(t.Context())
	a.mu.Lock()
	a.api, a.admin = replacement.URL, replacement.URL // restarted
	a.mu.Unlock()
	s.sample(t.Context())

	readings, _ := s.take()
	var got []float64
	for _, r := range readings {
		got = append(got, r.retries)
	}
	if want := []float64{0, 4, 11}; !slices.Equal(got, want) {
		t.Errorf("retries counted %v, want %v", got, want)
	}
}

// TestSampler_ARestartedInstanceWhoseFirstScrapeFailsCountsFromZero checks
// an instance replaced between scrapes whose new process does not answer
// its first scrape: it is still the old process that was last seen, so the
// new one's counters all count once it answers.
func TestSampler_ARestartedInstanceWhoseFirstScrapeFailsCountsFromZero(t *testing.T) {
	old, replacement := newMetricsPage(t, retriesPage(1000)), newMetricsPage(t, "")
	a := runningApp("a", old.URL)
	s := newSampler(testEnv(a), time.Now())
	s.sample(t.Context()) // the baseline
	a.mu.Lock()
	a.api, a.admin = replacement.URL, replacement.URL // restarted, not answering yet
	a.mu.Unlock()
	s.sample(t.Context())
	replacement.set(retriesPage(7))
	s.sample(t.Context())

	readings, _ := s.take()
	var got []float64
	for _, r := range readings {
		got = append(got, r.retries)
	}
	if want := []float64{0, 0, 7}; !slices.Equal(got, want) {
		t.Errorf("retries counted %v, want %v", got, want)
	}
}
