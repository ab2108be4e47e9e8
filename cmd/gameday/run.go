package main

import "time"

// The results of a game day, as the report shows them. A scenario runs
// once as configured ("protected") and, when a pattern is its defence, a
// second time with that pattern neutralised through configuration; each
// run is a Run.

// Run is one scenario run: its timeline, what happened, and its verdict.
type Run struct {
	Scenario   string `json:"scenario"`   // short name, e.g. "provider-outage"
	Title      string `json:"title"`      // one line for a heading
	Variant    string `json:"variant"`    // "protected", or "without <pattern>"
	Pattern    string `json:"pattern"`    // the defence the A/B compares, "" if none
	Neutralise string `json:"neutralise"` // the configuration that took the pattern out, for B runs
	Fault      string `json:"fault"`      // what was injected, in words
	Hypothesis string `json:"hypothesis"`
	SLO        SLO    `json:"slo"`

	// Offsets from the start of the run.
	FaultStart time.Duration `json:"fault_start_ns"`
	FaultEnd   time.Duration `json:"fault_end_ns"`
	End        time.Duration `json:"end_ns"`

	Timeline []Point `json:"timeline"`
	Events   []Event `json:"events"`
	Summary  Summary `json:"summary"`

	// Detect is when the service visibly reacted to the fault (a breaker
	// opened, readiness changed), Recover when the steady-state SLO held
	// again after the fault ended; both from FaultStart and FaultEnd, nil
	// when it did not happen.
	Detect  *time.Duration `json:"detect_ns,omitempty"`
	Recover *time.Duration `json:"recover_ns,omitempty"`
	// BudgetSpent is the share of the run's error budget (the requests the
	// availability objective allows to fail) that it used: 1 is all of it.
	BudgetSpent float64 `json:"error_budget_spent"`

	Checks     []Check `json:"checks"`     // the hypothesis, in measurable parts
	Invariants []Check `json:"invariants"` // the money, after reconciliation

	// Judged says whether the run's checks decide the verdict. Neutralised
	// runs are for comparison: their invariants must still hold, their
	// hypothesis checks are reported but not judged.
	Judged bool `json:"judged"`
	Passed bool `json:"passed"`
}

// SLO is the steady-state objective a scenario holds the service to
// outside its fault window.
type SLO struct {
	// Availability is the share of requests that must not fail (5xx other
	// than a fast refusal, or no answer).
	Availability float64 `json:"availability"`
	// P99 bounds the 99th percentile latency of answered requests.
	P99 time.Duration `json:"p99_ns"`
}

// Point is one bucket of the timeline (Step long).
type Point struct {
	At time.Duration `json:"at_ns"` // bucket start, from the start of the run

	// Requests per second by outcome: "201", "200", "202", "4xx", "429",
	// "503", "5xx" (other than 503), "no answer".
	Rates map[string]float64 `json:"rates"`
	P50   time.Duration      `json:"p50_ns"`
	P99   time.Duration      `json:"p99_ns"`

	// From the instances' metrics, summed over instances unless noted.
	BreakerOpen   float64       `json:"breaker_open"`   // provider breakers open (0, 1 or 2); half-open counts ½
	Retries       float64       `json:"retries"`        // provider retry attempts per second
	Rejections    float64       `json:"rejections"`     // bulkhead, egress and budget refusals per second
	PoolWait      time.Duration `json:"pool_wait_ns"`   // time requests waited for a Postgres connection, per second
	ReadyReplicas int           `json:"ready_replicas"` // instances whose readiness said ready (not degraded)
	Degraded      int           `json:"degraded"`       // instances ready but degraded
}

// Step is the width of a timeline bucket.
const Step = 500 * time.Millisecond

// Event is something that happened during a run, for the timeline.
type Event struct {
	At   time.Duration `json:"at_ns"`
	What string        `json:"what"`
	By   string        `json:"by"` // byFault or byService
}

// Who an event is by: what the game day did, or what the service was seen
// doing (a breaker changing state, readiness changing).
const (
	byFault   = "fault"
	byService = "service"
)

// Summary totals a run.
type Summary struct {
	Requests int            `json:"requests"`
	ByStatus map[string]int `json:"by_status"` // same keys as Point.Rates
	// Goodput is payments and refunds charged (answered 201, replays of an
	// earlier answer not counted) per second, over the whole run.
	Goodput float64 `json:"goodput"`
	// Failed are the requests the availability SLO counts against: no
	// answer, 500s, and 503s slower than a fast refusal.
	Failed int           `json:"failed"`
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	// FaultP99 is the p99 of answered requests sent inside the fault window.
	FaultP99 time.Duration `json:"fault_p99_ns"`
	// ProviderCalls counts the requests the provider received; Wasted those
	// it worked on after the caller had stopped waiting (its answer lost).
	ProviderCalls int `json:"provider_calls"`
	Wasted        int `json:"wasted"`
	// Retries of the load's own clients: requests sent again with the same
	// key after no answer or a 5xx.
	ClientRetries int `json:"client_retries"`
}

// Check is one measurable claim and what was measured.
type Check struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	OK   bool   `json:"ok"`
}

// Report is the whole game day.
type Report struct {
	Started  time.Time     `json:"started"`
	Took     time.Duration `json:"took_ns"`
	Mode     string        `json:"mode"` // "short" or "long"
	Command  string        `json:"command"`
	Machine  string        `json:"machine"` // cores, OS, Go
	Setup    []string      `json:"setup"`   // one line per part started and its configuration
	Runs     []*Run        `json:"runs"`
	Passed   bool          `json:"passed"`
	Failures []string      `json:"failures"` // one line per failed judged check or invariant
}
