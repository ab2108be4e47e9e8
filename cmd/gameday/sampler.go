package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// sampler reads every instance's metrics and readiness every Step, for the
// protection lines of the timeline and the events (a breaker opening,
// readiness changing).
type sampler struct {
	env   *Env
	start time.Time

	mu     sync.Mutex
	points []protections
	events []Event
	last   map[string]instanceState // by instance
	totals map[string]float64       // counters' increments over the run, all instances
}

// protections is one reading, summed over the instances.
type protections struct {
	at                    time.Duration
	breakerOpen           float64
	retries, rejections   float64 // counters' increments since the run began, turned into rates later
	attempts, calls       float64 // the provider retrier's attempts, and the calls they belong to
	poolWaitSeconds       float64
	ready, degraded       int
	providerCalls, wasted int64
}

// instanceState is what the sampler last saw of one instance, to report
// changes as events and to count its counters' increments.
type instanceState struct {
	api       string // the process scraped: a new one starts its counters at 0
	breaker   float64
	readiness readiness
	counters  map[string]float64
}

func newSampler(env *Env, start time.Time) *sampler {
	return &sampler{env: env, start: start, last: map[string]instanceState{}, totals: map[string]float64{}}
}

// event records something that happened now, done by who.
func (s *sampler) event(by, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, Event{At: time.Since(s.start), What: fmt.Sprintf(format, args...), By: by})
}

// run samples every Step until ctx ends.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(Step)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// The metrics the timeline shows, under the service's namespace.
const (
	metricBreaker    = "payservice_breaker_state"
	metricRetries    = "payservice_retry_attempts_total"
	metricBulkhead   = "payservice_bulkhead_rejections_total"
	metricEgress     = "payservice_egress_rate_limited_total"
	metricBudget     = "payservice_retry_budget_exhausted_total"
	metricPoolWait   = "go_sql_wait_duration_seconds_total"
	labelName        = "name"
	providerInstance = "provider"
)

func (s *sampler) sample(ctx context.Context) {
	p := protections{at: time.Since(s.start)}
	p.providerCalls, p.wasted = s.env.Capacity.Counts()
	states := s.env.Balancer.States()
	for _, a := range s.env.Apps() {
		st := states[a.name]
		switch st {
		case ready:
			p.ready++
		case degraded:
			p.degraded++
		}
		var cur instanceState
		cur.readiness = st
		s.mu.Lock()
		prev, seen := s.last[a.name]
		s.mu.Unlock()
		if api, admin, ok := a.running(); ok {
			// A scrape that fails leaves the instance as last seen, its
			// process included: zeros would read as a breaker closing, and
			// a new process's counters must count from its first scrape.
			cur.api, cur.breaker, cur.counters = prev.api, prev.breaker, prev.counters
			if fams, err := scrape(ctx, admin); err == nil {
				cur.api = api
				cur.breaker = sum(fams[metricBreaker], providerOnly)
				cur.counters = map[string]float64{
					"retries":  sum(fams[metricRetries], retriesOnly),
					"attempts": sum(fams[metricRetries], attemptsOnly),
					"calls":    sum(fams[metricRetries], callsOnly),
					"rejected": sum(fams[metricBulkhead], nil) + sum(fams[metricEgress], nil) + sum(fams[metricBudget], nil),
					"wait":     sum(fams[metricPoolWait], nil),
				}
				s.count(seen, prev, cur)
			}
		}
		s.compare(a.name, cur)
		switch cur.breaker {
		case 2:
			p.breakerOpen++
		case 1:
			p.breakerOpen += 0.5
		}
	}
	s.mu.Lock()
	p.retries, p.attempts, p.calls = s.totals["retries"], s.totals["attempts"], s.totals["calls"]
	p.rejections, p.poolWaitSeconds = s.totals["rejected"], s.totals["wait"]
	s.points = append(s.points, p)
	s.mu.Unlock()
}

// count adds what an instance's counters gained since the last scrape to
// the run's totals. The first scrape of the run is the baseline; a new
// process (a restart) counts from 0; a counter never gains less than 0.
func (s *sampler) count(seen bool, prev, cur instanceState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range cur.counters {
		switch {
		case !seen || (prev.api == cur.api && prev.counters == nil):
			// the baseline: counted from here on
		case prev.api != cur.api:
			s.totals[k] += v
		default:
			s.totals[k] += max(v-prev.counters[k], 0)
		}
	}
}

// compare turns changes of an instance's breaker and readiness into events.
func (s *sampler) compare(name string, cur instanceState) {
	s.mu.Lock()
	prev, seen := s.last[name]
	s.last[name] = cur
	s.mu.Unlock()
	if !seen {
		return
	}
	if prev.breaker != cur.breaker {
		s.event(byService, "instance %s: provider breaker %s", name, breakerName(cur.breaker))
	}
	if prev.readiness != cur.readiness {
		s.event(byService, "instance %s: %s", name, cur.readiness)
	}
}

// breakerName names a breaker_state value.
func breakerName(state float64) string {
	switch state {
	case 0:
		return "closed"
	case 1:
		return "half-open"
	default:
		return "open"
	}
}

func scrape(ctx context.Context, admin string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	client := http.Client{Timeout: time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// providerOnly keeps the series of the provider's protections.
func providerOnly(m *dto.Metric) bool { return label(m, labelName) == providerInstance }

// retriesOnly keeps the provider's failed attempts that were tried again.
func retriesOnly(m *dto.Metric) bool { return providerOnly(m) && label(m, "outcome") == "retried" }

// attemptsOnly keeps the provider's attempts, whatever came of them.
func attemptsOnly(m *dto.Metric) bool {
	return providerOnly(m) && label(m, "outcome") != "not_started"
}

// callsOnly keeps the provider's last attempts: one per call that made any.
func callsOnly(m *dto.Metric) bool {
	o := label(m, "outcome")
	return providerOnly(m) && (o == "success" || strings.HasPrefix(o, "final"))
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// sum adds the values of a family's series that keep passes (all when nil).
func sum(f *dto.MetricFamily, keep func(*dto.Metric) bool) float64 {
	var total float64
	for _, m := range f.GetMetric() {
		if keep != nil && !keep(m) {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		}
	}
	return total
}

// take returns the readings and events so far.
func (s *sampler) take() ([]protections, []Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]protections(nil), s.points...), append([]Event(nil), s.events...)
}
