package main

import (
	"maps"
	"math"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/observability"
)

// The evaluation of a run, on synthetic experiments: what counts as a
// failure, the objective's arithmetic, recovery, detection, the timeline
// and the summary; and the load's outcome buckets and mix of operations.

// TestFailed_CountsWhatTheAvailabilityObjectiveCounts checks which
// requests count against availability: no answer, a stale read, a 5xx, and
// a 503 slower than a fast refusal; not a fast 503, a 2xx or a 4xx.
func TestFailed_CountsWhatTheAvailabilityObjectiveCounts(t *testing.T) {
	tests := []struct {
		name string
		s    sample
		want bool
	}{
		{"no answer", sample{Status: 0, Latency: 6 * time.Second}, true},
		{"no answer at once", sample{Status: 0}, true},
		{"stale read", sample{Status: http.StatusNotFound, Stale: true}, true},
		{"stale 200", sample{Status: http.StatusOK, Stale: true}, true},
		{"500", sample{Status: http.StatusInternalServerError}, true},
		{"502", sample{Status: http.StatusBadGateway}, true},
		{"504", sample{Status: http.StatusGatewayTimeout}, true},
		{"slow 503", sample{Status: http.StatusServiceUnavailable, Latency: fastRefusal + time.Millisecond}, true},
		{"503 at the bound", sample{Status: http.StatusServiceUnavailable, Latency: fastRefusal}, false},
		{"fast 503", sample{Status: http.StatusServiceUnavailable, Latency: 5 * time.Millisecond}, false},
		{"201", sample{Status: http.StatusCreated}, false},
		{"202", sample{Status: http.StatusAccepted, Latency: 2 * time.Second}, false},
		{"200", sample{Status: http.StatusOK}, false},
		{"404 not stale", sample{Status: http.StatusNotFound}, false},
		{"409", sample{Status: http.StatusConflict}, false},
		{"429", sample{Status: http.StatusTooManyRequests}, false},
	}
	for _, tt := range tests {
		if got := failed(tt.s); got != tt.want {
			t.Errorf("failed(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestMeetsSLO_ChecksAvailabilityAndP99 checks the objective's arithmetic:
// availability is the share of requests not failed, held inclusively; p99
// is over the requests not failed, so the latency of a failure does not
// count twice.
func TestMeetsSLO_ChecksAvailabilityAndP99(t *testing.T) {
	slo := SLO{Availability: 0.99, P99: 300 * time.Millisecond}
	fast := func(n int) []sample {
		return slices.Repeat([]sample{{Status: http.StatusCreated, Latency: 20 * time.Millisecond}}, n)
	}
	with := func(s []sample, extra ...sample) []sample { return append(s, extra...) }
	tests := []struct {
		name    string
		samples []sample
		avail   float64
		p99     time.Duration
		ok      bool
	}{
		{"nothing measured", nil, 1, 0, true},
		{"all fast", fast(100), 1, 20 * time.Millisecond, true},
		{"one failure in 100 is allowed", with(fast(99), sample{Status: 500, Latency: 10 * time.Second}), 0.99, 20 * time.Millisecond, true},
		{"two are not", with(fast(98), sample{}, sample{Status: 500}), 0.98, 20 * time.Millisecond, false},
		{"a fast refusal is not a failure", with(fast(98), sample{Status: 503, Latency: time.Millisecond}, sample{Status: 503, Latency: time.Millisecond}), 1, 20 * time.Millisecond, true},
		{"the slowest of 100 is the p99", with(fast(99), sample{Status: 201, Latency: time.Second}), 1, time.Second, false},
		{"the slowest of 200 is not", with(fast(199), sample{Status: 201, Latency: time.Second}), 1, 20 * time.Millisecond, true},
		{"p99 at the bound holds", with(fast(99), sample{Status: 201, Latency: 300 * time.Millisecond}), 1, 300 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			avail, p99, ok := meetsSLO(tt.samples, slo)
			if math.Abs(avail-tt.avail) > 1e-9 || p99 != tt.p99 || ok != tt.ok {
				t.Errorf("meetsSLO = %v, %v, %v; want %v, %v, %v", avail, p99, ok, tt.avail, tt.p99, tt.ok)
			}
		})
	}
}

// TestPercentile_IgnoresUnansweredRequests checks that a request with no
// answer has no latency to rank: a client timeout is not a slow answer.
func TestPercentile_IgnoresUnansweredRequests(t *testing.T) {
	samples := []sample{
		{Status: 0, Latency: 6 * time.Second},
		{Status: 201, Latency: 30 * time.Millisecond},
		{Status: 0, Latency: 6 * time.Second},
		{Status: 200, Latency: 10 * time.Millisecond},
		{Status: 503, Latency: 20 * time.Millisecond},
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0, 10 * time.Millisecond},
		{0.5, 20 * time.Millisecond},
		{0.99, 30 * time.Millisecond},
		{1, 30 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := percentile(samples, tt.q, nil); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := percentile(samples[:1], 0.99, nil); got != 0 {
		t.Errorf("percentile of unanswered requests only = %v, want 0", got)
	}
}

// TestExperiment_AnsweredBeforeUsesTheAnswerTimeAndWindowTheSendTime checks
// the two ways of cutting a run: what was over before an instant (sent and
// answered), and what was sent in an interval (however long it took).
func TestExperiment_AnsweredBeforeUsesTheAnswerTimeAndWindowTheSendTime(t *testing.T) {
	x := &experiment{start: t0, samples: []sample{
		req(8*time.Second, opCreate, 201, time.Second),               // 0: answered at 9 s
		req(9*time.Second, opCreate, 0, 2*time.Second),               // 1: given up at 11 s
		req(9500*time.Millisecond, opGet, 200, 500*time.Millisecond), // 2: answered at 10 s exactly
		req(10*time.Second, opCreate, 201, 10*time.Millisecond),      // 3
		req(12*time.Second, opCreate, 201, 10*time.Millisecond),      // 4
	}}
	if got := indexes(x.samples, x.answeredBefore(10*time.Second)); !slices.Equal(got, []int{0}) {
		t.Errorf("answeredBefore(10s) = samples %v, want [0]", got)
	}
	if got := indexes(x.samples, x.window(9*time.Second, 12*time.Second)); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("window(9s, 12s) = samples %v, want [1 2 3]", got)
	}
}

// TestRecovery_IsTheStartOfTheLastStretchThatMeetsTheObjective checks
// recovery on runs with a fault from 10 s to 20 s: the offset from the
// fault's end of the first second after which every second meets the
// objective and serves POSTs as before the fault, or nil when that never
// comes.
func TestRecovery_IsTheStartOfTheLastStretchThatMeetsTheObjective(t *testing.T) {
	tests := []struct {
		name  string
		after []sample // from 20 s to 30 s
		want  *time.Duration
	}{
		{"well at once", traffic(20*time.Second, 30*time.Second, healthy), new(time.Duration(0))},
		{"after two bad seconds", join(
			traffic(20*time.Second, 22*time.Second, broken),
			traffic(22*time.Second, 30*time.Second, healthy)), new(2 * time.Second)},
		{"a relapse starts again", join(
			traffic(20*time.Second, 24*time.Second, healthy),
			traffic(24*time.Second, 25*time.Second, broken),
			traffic(25*time.Second, 30*time.Second, healthy)), new(5 * time.Second)},
		{"refusing fast for three seconds", join(
			traffic(20*time.Second, 23*time.Second, refusing),
			traffic(23*time.Second, 30*time.Second, healthy)), new(3 * time.Second)},
		{"never well", traffic(20*time.Second, 30*time.Second, broken), nil},
		{"too slow", traffic(20*time.Second, 30*time.Second, slow), nil},
		{"well but for the last half second", join(
			traffic(20*time.Second, 29500*time.Millisecond, healthy),
			traffic(29500*time.Millisecond, 30*time.Second, broken)), nil},
		// Every POST refused fast meets the objective: availability counts
		// a fast 503 as no failure. It serves nothing, though.
		{"refusing every POST fast", traffic(20*time.Second, 30*time.Second, refusing), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := faultRun(join(
				traffic(0, 10*time.Second, healthy),
				traffic(10*time.Second, 20*time.Second, broken),
				tt.after))
			got := recovery(x)
			switch {
			case got == nil && tt.want == nil:
			case got == nil || tt.want == nil || *got != *tt.want:
				t.Errorf("recovery = %s, want %s", optionalDuration(got), optionalDuration(tt.want))
			}
		})
	}
}

// TestTimeline_BucketsRequestsByStepAsRatesPerOutcome checks the request
// lines of the timeline: one point per Step up to the run's end, each with
// the rate of every outcome of the requests sent in it, in requests per
// second, and their latency percentiles.
func TestTimeline_BucketsRequestsByStepAsRatesPerOutcome(t *testing.T) {
	x := &experiment{start: t0, run: &Run{End: 3 * Step}, samples: []sample{
		req(0, opCreate, 201, 10*time.Millisecond),
		req(100*time.Millisecond, opCreate, 201, 30*time.Millisecond),
		req(Step-time.Nanosecond, opCreate, 503, 5*time.Millisecond),
		req(Step, opGet, 0, 6*time.Second),
		req(3*Step+time.Millisecond, opGet, 200, 10*time.Millisecond), // in the last bucket
		req(4*Step, opGet, 200, 10*time.Millisecond),                  // after the end
	}}
	points := timeline(x)
	want := []struct {
		rates    map[string]float64
		p50, p99 time.Duration
	}{
		{map[string]float64{"201": 4, "503": 2}, 10 * time.Millisecond, 30 * time.Millisecond},
		{map[string]float64{"no answer": 2}, 0, 0},
		{map[string]float64{}, 0, 0},
		{map[string]float64{"200": 2}, 10 * time.Millisecond, 10 * time.Millisecond},
	}
	if len(points) != len(want) {
		t.Fatalf("%d points, want %d", len(points), len(want))
	}
	for i, p := range points {
		w := want[i]
		if p.At != time.Duration(i)*Step {
			t.Errorf("point %d at %v, want %v", i, p.At, time.Duration(i)*Step)
		}
		if !equalRates(p.Rates, w.rates) {
			t.Errorf("point %d: rates %v, want %v", i, p.Rates, w.rates)
		}
		if p.P50 != w.p50 || p.P99 != w.p99 {
			t.Errorf("point %d: p50 %v, p99 %v; want %v, %v", i, p.P50, p.P99, w.p50, w.p99)
		}
	}
}

// TestTimeline_TurnsCountersIntoRatesAndNeverANegativeOne checks the
// protection lines: gauges as read, counters as their increase per second
// since the previous reading, and a counter that went down (an instance
// restarted) as no increase rather than a negative rate.
func TestTimeline_TurnsCountersIntoRatesAndNeverANegativeOne(t *testing.T) {
	x := &experiment{start: t0, run: &Run{End: 3 * Step}, readings: []protections{
		{at: 100 * time.Millisecond, retries: 10, rejections: 4, poolWaitSeconds: 1, ready: 2},
		{at: 600 * time.Millisecond, retries: 20, rejections: 6, poolWaitSeconds: 1.25, breakerOpen: 1.5, ready: 1, degraded: 1},
		{at: 1100 * time.Millisecond, retries: 5, rejections: 1, poolWaitSeconds: 0.5, ready: 1}, // b restarted
		{at: 1600 * time.Millisecond, retries: 9, rejections: 1, poolWaitSeconds: 0.75, ready: 2},
		{at: 2100 * time.Millisecond, retries: 1e6, ready: 0}, // after the end
	}}
	points := timeline(x)
	want := []Point{
		{ReadyReplicas: 2},
		{Retries: 20, Rejections: 4, PoolWait: 500 * time.Millisecond, BreakerOpen: 1.5, ReadyReplicas: 1, Degraded: 1},
		{ReadyReplicas: 1},
		{Retries: 8, PoolWait: 500 * time.Millisecond, ReadyReplicas: 2},
	}
	if len(points) != len(want) {
		t.Fatalf("%d points, want %d", len(points), len(want))
	}
	for i, p := range points {
		w := want[i]
		if p.Retries != w.Retries || p.Rejections != w.Rejections || p.PoolWait != w.PoolWait {
			t.Errorf("point %d: retries %v/s, rejections %v/s, pool wait %v/s; want %v, %v, %v",
				i, p.Retries, p.Rejections, p.PoolWait, w.Retries, w.Rejections, w.PoolWait)
		}
		if p.BreakerOpen != w.BreakerOpen || p.ReadyReplicas != w.ReadyReplicas || p.Degraded != w.Degraded {
			t.Errorf("point %d: breakers open %v, ready %d, degraded %d; want %v, %d, %d",
				i, p.BreakerOpen, p.ReadyReplicas, p.Degraded, w.BreakerOpen, w.ReadyReplicas, w.Degraded)
		}
	}
}

// TestBudgetSpent_IsFailuresOverWhatTheObjectiveAllows checks the share of
// the error budget a run used: its failures over the requests times the
// share the availability objective lets fail. Every run has fast refusals
// among its requests, which spend nothing.
func TestBudgetSpent_IsFailuresOverWhatTheObjectiveAllows(t *testing.T) {
	tests := []struct {
		name             string
		requests, failed int
		availability     float64
		want             float64
	}{
		{"half", 1000, 5, 0.99, 0.5},
		{"twice over", 200, 4, 0.99, 2},
		{"all of it", 1000, 10, 0.99, 1},
		{"none", 1000, 0, 0.99, 0},
		{"no requests", 0, 0, 0.99, 0},
		{"nothing allowed, nothing failed", 100, 0, 1, 0},
	}
	for _, tt := range tests {
		x := budgetRun(tt.requests, tt.failed, tt.availability)
		if got := budgetSpent(x); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: budgetSpent = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestBudgetSpent_FailuresUnderAnObjectiveThatAllowsNoneSpendMoreThanTheBudget
// checks an objective that allows no failure: any failure is over its
// budget, never 0% of it.
func TestBudgetSpent_FailuresUnderAnObjectiveThatAllowsNoneSpendMoreThanTheBudget(t *testing.T) {
	x := budgetRun(100, 3, 1)
	if got := budgetSpent(x); got <= 1 {
		t.Errorf("budgetSpent with 3 failures and none allowed = %v, want more than 1 (the whole budget)", got)
	}
}

// TestSummarize_CountsGoodputAsChargesOnly checks the summary's totals,
// and that goodput counts only creates and refunds answered 201: not the
// replays that duplicates get, not reads.
func TestSummarize_CountsGoodputAsChargesOnly(t *testing.T) {
	x := &experiment{
		start: t0, faultStart: time.Second, faultEnd: 2 * time.Second,
		run: &Run{End: 4 * time.Second},
		samples: []sample{
			req(0, opCreate, 201, 10*time.Millisecond),
			req(0, opCreate, 201, 10*time.Millisecond),
			req(0, opRefund, 201, 10*time.Millisecond),
			req(0, opDuplicate, 201, 10*time.Millisecond),
			req(0, opDuplicate, 201, 10*time.Millisecond),
			req(0, opGet, 200, 10*time.Millisecond),
			req(1500*time.Millisecond, opCreate, 0, 6*time.Second),
			{Sent: t0.Add(1600 * time.Millisecond), Op: opCreate, Status: 201, Latency: 900 * time.Millisecond, Retry: true},
			req(1700*time.Millisecond, opRefund, 503, 2*time.Millisecond),
			req(3*time.Second, opCreate, 202, 10*time.Millisecond),
		},
	}
	s := summarize(x)
	if s.Goodput != 1 { // 4 charges in 4 s
		t.Errorf("goodput = %v/s, want 1", s.Goodput)
	}
	if s.Requests != 10 || s.Failed != 1 || s.ClientRetries != 1 {
		t.Errorf("requests %d, failed %d, client retries %d; want 10, 1, 1", s.Requests, s.Failed, s.ClientRetries)
	}
	wantByStatus := map[string]int{"201": 6, "200": 1, "202": 1, "503": 1, "no answer": 1}
	if !maps.Equal(s.ByStatus, wantByStatus) {
		t.Errorf("by status %v, want %v", s.ByStatus, wantByStatus)
	}
	if s.FaultP99 != 900*time.Millisecond {
		t.Errorf("p99 in the fault window = %v, want 900ms (the answered requests sent in it)", s.FaultP99)
	}
}

// TestDetect_IsTheFirstChangeTheServiceShowsAfterTheFaultStarts checks
// detect: the offset from the fault's start of the first change of a
// breaker or of readiness that the sampler saw, or nil when none came.
// The events come from where a run gets them: the fault writes its own
// through x.event, the sampler's compare writes what it saw change.
func TestDetect_IsTheFirstChangeTheServiceShowsAfterTheFaultStarts(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  *time.Duration
	}{
		{"a breaker opens", []step{
			seen(9*time.Second, "a", breakerIs(1)),
			faultWrites(10*time.Second, "fault: the provider answers 500"),
			seen(10300*time.Millisecond, "b", breakerIs(2)),
			seen(10400*time.Millisecond, "a", breakerIs(2)),
		}, new(300 * time.Millisecond)},
		{"readiness changes", []step{
			faultWrites(10*time.Second, "fault: redis is killed"),
			faultWrites(10*time.Second, "redis killed"),
			seen(11*time.Second, "a", readinessIs(degraded)),
		}, new(time.Second)},
		{"nothing changes after the fault starts", []step{
			seen(9*time.Second, "a", readinessIs(notReady)),
			faultWrites(10*time.Second, "fault: a slow provider"),
			faultWrites(20*time.Second, "fault over"),
		}, nil},
		// The fault's own events name instances too ("instance b killed",
		// "instance a: SIGTERM"): they are not the service's reaction.
		{"the fault's own event is not a reaction", []step{
			faultWrites(10*time.Second, "fault: instance b gets SIGKILL"),
			faultWrites(10001*time.Millisecond, "instance b killed"),
			seen(10500*time.Millisecond, "b", readinessIs(down)),
		}, new(500 * time.Millisecond)},
		{"nor is a signal the fault sends", []step{
			faultWrites(10*time.Second, "fault: each instance in turn gets SIGTERM"),
			faultWrites(10*time.Second, "instance a: SIGTERM"),
			seen(10200*time.Millisecond, "a", readinessIs(notReady)),
		}, new(200 * time.Millisecond)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := &experiment{sampler: newSampler(nil, time.Now()), faultStart: 10 * time.Second}
			states := map[string]instanceState{"a": {readiness: ready}, "b": {readiness: ready}}
			for name, st := range states {
				x.sampler.compare(name, st) // first sight: no event
			}
			for _, st := range tt.steps {
				if st.instance == "" {
					x.event("%s", st.fault)
					continue
				}
				cur := states[st.instance]
				st.change(&cur)
				states[st.instance] = cur
				x.sampler.compare(st.instance, cur)
			}
			_, x.events = x.sampler.take()
			if len(x.events) != len(tt.steps) {
				t.Fatalf("%d events for %d steps: %v", len(x.events), len(tt.steps), x.events)
			}
			for i := range x.events { // at the times the steps say
				x.events[i].At = tt.steps[i].at
			}

			got := detect(x)
			switch {
			case got == nil && tt.want == nil:
			case got == nil || tt.want == nil || *got != *tt.want:
				t.Errorf("detect = %s, want %s", optionalDuration(got), optionalDuration(tt.want))
			}
		})
	}
}

// TestSampleOutcome_BucketsByStatus checks the report's buckets: no
// answer, 429 and 503 on their own, other 5xx together, 4xx together, and
// any other status by its code.
func TestSampleOutcome_BucketsByStatus(t *testing.T) {
	tests := []struct {
		status int
		want   string
	}{
		{0, "no answer"},
		{http.StatusOK, "200"},
		{http.StatusCreated, "201"},
		{http.StatusAccepted, "202"},
		{http.StatusBadRequest, "4xx"},
		{http.StatusNotFound, "4xx"},
		{http.StatusConflict, "4xx"},
		{http.StatusUnprocessableEntity, "4xx"},
		{http.StatusTooManyRequests, "429"},
		{http.StatusInternalServerError, "5xx"},
		{http.StatusBadGateway, "5xx"},
		{http.StatusServiceUnavailable, "503"},
		{http.StatusGatewayTimeout, "5xx"},
	}
	for _, tt := range tests {
		if got := (sample{Status: tt.status}).outcome(); got != tt.want {
			t.Errorf("outcome of %d = %q, want %q", tt.status, got, tt.want)
		}
	}
}

// TestPickOp_SpreadsTheMixOverEveryTenRequests checks the load's mix: of
// every 10 consecutive requests, wherever the count starts, 6 create, 1
// sends a duplicate, 1 refunds and 2 read.
func TestPickOp_SpreadsTheMixOverEveryTenRequests(t *testing.T) {
	want := map[string]int{opCreate: 6, opDuplicate: 1, opRefund: 1, opGet: 2}
	for start := range 20 {
		got := map[string]int{}
		for n := start; n < start+10; n++ {
			got[pickOp(n)]++
		}
		if !maps.Equal(got, want) {
			t.Fatalf("requests %d to %d: %v, want %v", start, start+9, got, want)
		}
	}
}

// A step is an event of a run: one the fault writes, or a change of an
// instance that the sampler sees.
type step struct {
	at       time.Duration
	fault    string
	instance string
	change   func(*instanceState)
}

func faultWrites(at time.Duration, what string) step { return step{at: at, fault: what} }

func seen(at time.Duration, instance string, change func(*instanceState)) step {
	return step{at: at, instance: instance, change: change}
}

func breakerIs(v float64) func(*instanceState) {
	return func(s *instanceState) { s.breaker = v }
}

func readinessIs(r readiness) func(*instanceState) {
	return func(s *instanceState) { s.readiness = r }
}

// t0 is when the synthetic runs start.
var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// req is a request sent at offset at from t0.
func req(at time.Duration, op string, status int, latency time.Duration) sample {
	return sample{Sent: t0.Add(at), Op: op, Status: status, Latency: latency}
}

// An answerer says how the service answers an operation.
type answerer func(op string) (status int, latency time.Duration)

func healthy(op string) (int, time.Duration) {
	if op == opGet {
		return http.StatusOK, 10 * time.Millisecond
	}
	return http.StatusCreated, 20 * time.Millisecond
}

func broken(string) (int, time.Duration) {
	return http.StatusInternalServerError, 30 * time.Millisecond
}

func slow(op string) (int, time.Duration) {
	status, _ := healthy(op)
	return status, 400 * time.Millisecond
}

// refusing sheds every POST with a fast 503 and serves reads.
func refusing(op string) (int, time.Duration) {
	if op == opGet {
		return healthy(op)
	}
	return http.StatusServiceUnavailable, 5 * time.Millisecond
}

// traffic is the load's mix at 10 requests a second over [from, to), each
// answered by answer.
func traffic(from, to time.Duration, answer answerer) []sample {
	const every = 100 * time.Millisecond
	var out []sample
	for at := from; at < to; at += every {
		op := pickOp(int(at / every))
		status, latency := answer(op)
		out = append(out, req(at, op, status, latency))
	}
	return out
}

func join(parts ...[]sample) []sample { return slices.Concat(parts...) }

// faultRun is a 30-second run of samples with a fault from 10 s to 20 s,
// held to 99% and 300 ms.
func faultRun(samples []sample) *experiment {
	return &experiment{
		start: t0, samples: samples,
		faultStart: 10 * time.Second, faultEnd: 20 * time.Second,
		run: &Run{SLO: SLO{Availability: 0.99, P99: 300 * time.Millisecond}, End: 30 * time.Second},
	}
}

// budgetRun is a run of requests of which failed got no answer, held to
// availability.
func budgetRun(requests, failed int, availability float64) *experiment {
	x := &experiment{start: t0, run: &Run{SLO: SLO{Availability: availability, P99: time.Second}}}
	for i := range requests {
		status := http.StatusCreated
		if i < failed {
			status = 0
		} else if i%2 == 0 {
			status = http.StatusServiceUnavailable // a fast refusal, not a failure
		}
		x.samples = append(x.samples, req(time.Duration(i)*time.Millisecond, opCreate, status, time.Millisecond))
	}
	return x
}

// indexes returns the positions in all of the samples in some.
func indexes(all, some []sample) []int {
	var out []int
	for _, s := range some {
		out = append(out, slices.IndexFunc(all, func(a sample) bool { return a == s }))
	}
	return out
}

func equalRates(a, b map[string]float64) bool {
	return maps.EqualFunc(a, b, func(v, w float64) bool { return math.Abs(v-w) < 1e-9 })
}

// TestServiceSLO_IsTheOneSLOsYAMLDeclares checks that the game day holds
// runs to the objectives the alerts and the dashboard use, not numbers of
// its own.
func TestServiceSLO_IsTheOneSLOsYAMLDeclares(t *testing.T) {
	got, err := serviceSLO()
	if err != nil {
		t.Fatal(err)
	}
	a, err := observability.SLOByName(availabilitySLO)
	if err != nil {
		t.Fatal(err)
	}
	l, err := observability.SLOByName(latencySLO)
	if err != nil {
		t.Fatal(err)
	}
	want := SLO{Availability: a.Objective / 100, P99: time.Duration(l.Threshold)}
	if got.P99 != want.P99 || math.Abs(got.Availability-want.Availability) > 1e-12 {
		t.Errorf("serviceSLO() = %+v, want %+v from slos.yaml", got, want)
	}
}
