package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/paymentsaudit"
)

// Scenario is one experiment: a hypothesis about how the service behaves
// under a fault, the steady-state objective it is held to, the fault, and
// the checks that decide whether the hypothesis held.
type Scenario struct {
	Name, Title, Fault, Hypothesis string
	SLO                            SLO
	// Env is the instances' configuration for this scenario, over the
	// game day's base.
	Env map[string]string
	// Pattern is the defence that an A/B run takes out through Neutralise
	// (configuration that puts it out of reach), described by
	// NeutraliseText; empty when the scenario has no A/B.
	Pattern        string
	Neutralise     map[string]string
	NeutraliseText string

	// Setup runs before the load starts, Teardown after the run (both
	// optional): capacity or rates of the scenario's own.
	Setup, Teardown func(ctx context.Context, x *experiment) error
	// Inject injects the fault and returns when the fault window ends:
	// after x.hold() for a fault that lasts, or when a sequence (a rollout,
	// a failover) is done.
	Inject func(ctx context.Context, x *experiment) error
	// Checks turn the run's measurements into the hypothesis's checks.
	Checks func(x *experiment) []Check
}

// Phases are how long a run spends before, in and after its fault.
type Phases struct {
	Steady, Fault, Recovery time.Duration
}

// experiment is one run of a scenario in progress, and what it measured.
type experiment struct {
	env     *Env
	acks    *acks
	load    *load
	sampler *sampler
	phases  Phases
	log     *slog.Logger

	start                time.Time
	faultStart, faultEnd time.Duration
	samples              []sample
	readings             []protections
	events               []Event
	run                  *Run
}

// eventAt is when the fault recorded what; ok is false if it never did.
func (x *experiment) eventAt(what string) (at time.Duration, ok bool) {
	for _, e := range x.events {
		if e.By == byFault && e.What == what {
			return e.At, true
		}
	}
	return 0, false
}

// event records something the fault did.
func (x *experiment) event(format string, args ...any) { x.sampler.event(byFault, format, args...) }

// hold waits out the fault phase.
func (x *experiment) hold(ctx context.Context) error { return sleep(ctx, x.phases.Fault) }

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// settleWithin bounds the wait for the reconciler after a run: it looks at
// a payment RECONCILE_AFTER after its last attempt, on its next scan.
const settleWithin = 30 * time.Second

// runScenario runs s once: protected, or without its pattern.
func runScenario(ctx context.Context, env *Env, acked *acks, s Scenario, phases Phases, rate float64, neutralised bool, log *slog.Logger) (*Run, error) {
	r := &Run{
		Scenario: s.Name, Title: s.Title, Variant: "protected", Pattern: s.Pattern,
		Fault: s.Fault, Hypothesis: s.Hypothesis, SLO: s.SLO, Judged: !neutralised,
	}
	extra := s.Env
	if neutralised {
		r.Variant, r.Neutralise = "without "+s.Pattern, s.NeutraliseText
		extra = mergeEnv(s.Env, s.Neutralise)
	}
	log.Info("scenario", "name", s.Name, "variant", r.Variant)
	if err := env.Configure(ctx, extra); err != nil {
		return nil, err
	}
	for _, a := range env.Apps() { // restarted instances are in the balancer again
		if err := env.Balancer.waitReady(ctx, a); err != nil {
			return nil, err
		}
	}
	x := &experiment{env: env, acks: acked, phases: phases, log: log, run: r}
	x.load = newLoad(env.Balancer, acked, rate)
	if s.Setup != nil {
		if err := s.Setup(ctx, x); err != nil {
			return nil, fmt.Errorf("%s: setup: %w", s.Name, err)
		}
	}
	calls0, wasted0 := env.Capacity.Counts()
	if err := x.drive(ctx, s); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	if s.Teardown != nil {
		if err := s.Teardown(ctx, x); err != nil {
			return nil, fmt.Errorf("%s: teardown: %w", s.Name, err)
		}
	}
	calls, wasted := env.Capacity.Counts()
	logFailures(log, x)
	x.evaluate(s)
	r.Summary.ProviderCalls, r.Summary.Wasted = int(calls-calls0), int(wasted-wasted0)
	inv, err := invariants(ctx, env, acked)
	if err != nil {
		return nil, err
	}
	r.Invariants = inv
	r.Passed = allOK(r.Invariants) && (!r.Judged || allOK(r.Checks))
	return r, nil
}

// drive runs the load and the sampler through the steady phase, the fault
// and the recovery, then collects what they measured.
func (x *experiment) drive(ctx context.Context, s Scenario) error {
	x.start = time.Now()
	x.sampler = newSampler(x.env, x.start)
	bg, stop := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() { x.sampler.run(bg); done <- struct{}{} }()
	go func() { x.load.run(bg); done <- struct{}{} }()
	err := func() error {
		if err := sleep(ctx, x.phases.Steady); err != nil {
			return err
		}
		x.faultStart = time.Since(x.start)
		x.event("fault: %s", s.Fault)
		err := s.Inject(ctx, x)
		x.faultEnd = time.Since(x.start)
		x.event("fault over")
		if err != nil {
			return fmt.Errorf("fault: %w", err)
		}
		return sleep(ctx, x.phases.Recovery)
	}()
	stop()
	// The run ends when the schedule stops; the requests still in flight
	// finish (their clients retry no more), but the run is judged on what
	// was sent before its end.
	x.run.End = time.Since(x.start)
	<-done
	<-done
	x.samples = x.load.Take()
	x.readings, x.events = x.sampler.take()
	return err
}

// evaluate turns the measurements into the run's timeline, summary and
// checks.
func (x *experiment) evaluate(s Scenario) {
	r := x.run
	r.FaultStart, r.FaultEnd = x.faultStart, x.faultEnd
	r.Events = x.events
	r.Timeline = timeline(x)
	r.Summary = summarize(x)
	r.Detect = detect(x)
	r.Recover = recovery(x)
	r.BudgetSpent = budgetSpent(x)
	r.Checks = append(steadyChecks(x), s.Checks(x)...)
}

// logFailures logs the first failed requests of a run, for whoever reads
// why a run failed.
func logFailures(log *slog.Logger, x *experiment) {
	shown := 0
	for _, s := range x.samples {
		if failed(s) && shown < 5 {
			shown++
			log.Info("failed request", "sent", s.Sent.Sub(x.start).Round(time.Millisecond), "op", s.Op,
				"instance", s.Instance, "status", s.Status, "latency", s.Latency.Round(time.Millisecond), "err", s.err)
		}
	}
}

func allOK(checks []Check) bool {
	for _, c := range checks {
		if !c.OK {
			return false
		}
	}
	return true
}

// fastRefusal is how quickly a 503 must come for the SLO to count it a
// refusal, not a failure: a shed request costs its client nothing but a
// retry later.
const fastRefusal = 250 * time.Millisecond

// failed says whether a request counts against availability.
func failed(s sample) bool {
	switch {
	case s.Status == 0, s.Stale:
		return true
	case s.Status == 503:
		return s.Latency > fastRefusal
	default:
		return s.Status >= 500
	}
}

// answeredBefore returns the samples whose answer (or its absence) came
// before t: the steady state is what was over before the fault began.
func (x *experiment) answeredBefore(t time.Duration) []sample {
	var out []sample
	for _, s := range x.samples {
		if s.Sent.Sub(x.start)+s.Latency < t {
			out = append(out, s)
		}
	}
	return out
}

// window returns the samples sent in [from, to).
func (x *experiment) window(from, to time.Duration) []sample {
	var out []sample
	for _, s := range x.samples {
		if at := s.Sent.Sub(x.start); at >= from && at < to {
			out = append(out, s)
		}
	}
	return out
}

func percentile(samples []sample, q float64, keep func(sample) bool) time.Duration {
	var d []time.Duration
	for _, s := range samples {
		if s.Status != 0 && (keep == nil || keep(s)) {
			d = append(d, s.Latency)
		}
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

func count(samples []sample, keep func(sample) bool) int {
	n := 0
	for _, s := range samples {
		if keep(s) {
			n++
		}
	}
	return n
}

// meetsSLO says whether samples hold the objective.
func meetsSLO(samples []sample, slo SLO) (availability float64, p99 time.Duration, ok bool) {
	if len(samples) == 0 {
		return 1, 0, true
	}
	availability = 1 - float64(count(samples, failed))/float64(len(samples))
	p99 = percentile(samples, 0.99, func(s sample) bool { return !failed(s) })
	return availability, p99, availability >= slo.Availability && p99 <= slo.P99
}

func timeline(x *experiment) []Point {
	buckets := int(x.run.End/Step) + 1
	points := make([]Point, buckets)
	bySlot := make([][]sample, buckets)
	for _, s := range x.samples {
		i := int(s.Sent.Sub(x.start) / Step)
		if i >= 0 && i < buckets {
			bySlot[i] = append(bySlot[i], s)
		}
	}
	for i := range points {
		p := &points[i]
		p.At = time.Duration(i) * Step
		p.Rates = map[string]float64{}
		for _, s := range bySlot[i] {
			p.Rates[s.outcome()] += 1 / Step.Seconds()
		}
		p.P50 = percentile(bySlot[i], 0.5, nil)
		p.P99 = percentile(bySlot[i], 0.99, nil)
	}
	var prev *protections
	for i := range x.readings {
		rd := x.readings[i]
		j := int(rd.at / Step)
		if j >= buckets {
			continue
		}
		p := &points[j]
		p.BreakerOpen, p.ReadyReplicas, p.Degraded = rd.breakerOpen, rd.ready, rd.degraded
		if prev != nil {
			dt := (rd.at - prev.at).Seconds()
			p.Retries = max(rd.retries-prev.retries, 0) / dt // a restart resets counters: no negative rates
			p.Rejections = max(rd.rejections-prev.rejections, 0) / dt
			p.PoolWait = time.Duration(max(rd.poolWaitSeconds-prev.poolWaitSeconds, 0) / dt * float64(time.Second))
		}
		prev = &x.readings[i]
	}
	return points
}

func summarize(x *experiment) Summary {
	s := Summary{Requests: len(x.samples), ByStatus: map[string]int{}}
	for _, sm := range x.samples {
		s.ByStatus[sm.outcome()]++
		if failed(sm) {
			s.Failed++
		}
		if sm.Retry {
			s.ClientRetries++
		}
	}
	charged := count(x.samples, func(sm sample) bool { return sm.Status == 201 && (sm.Op == opCreate || sm.Op == opRefund) })
	s.Goodput = float64(charged) / x.run.End.Seconds()
	s.P50 = percentile(x.samples, 0.5, nil)
	s.P99 = percentile(x.samples, 0.99, nil)
	s.FaultP99 = percentile(x.window(x.faultStart, x.faultEnd), 0.99, nil)
	return s
}

// detect is the first reaction of the service to the fault that its
// metrics or readiness show: a breaker changing state, readiness changing;
// not what the fault itself did.
func detect(x *experiment) *time.Duration {
	for _, e := range x.events {
		if e.At >= x.faultStart && e.By == byService {
			d := e.At - x.faultStart
			return &d
		}
	}
	return nil
}

// recovery is how long after the fault ended the service was well again:
// the start of the first second after which every second meets the
// objective and serves its POSTs nearly (90%) as well as before the fault
// (the objective alone is met by a service refusing everything fast). A
// second without requests proves nothing and counts as not well.
func recovery(x *experiment) *time.Duration {
	const win = time.Second
	steady := servedShare(x.answeredBefore(x.faultStart))
	var start *time.Duration
	for at := x.faultEnd; at+win <= x.run.End; at += Step {
		w := x.window(at, at+win)
		if _, _, ok := meetsSLO(w, x.run.SLO); ok && len(w) > 0 && servedShare(w) >= 0.9*steady {
			if start == nil {
				d := at - x.faultEnd
				start = &d
			}
		} else {
			start = nil
		}
	}
	return start
}

// servedShare is the share of POSTs answered 2xx.
func servedShare(samples []sample) float64 {
	posts := count(samples, func(s sample) bool { return s.Op != opGet })
	if posts == 0 {
		return 1
	}
	return float64(count(samples, func(s sample) bool { return s.Op != opGet && s.Status >= 200 && s.Status < 300 })) / float64(posts)
}

// budgetSpent is the share of the run's error budget its failures used.
// An objective that allows no failure at all is given a budget of one, so
// that failures still show as budget spent.
func budgetSpent(x *experiment) float64 {
	allowed := max(float64(len(x.samples))*(1-x.run.SLO.Availability), 1)
	return float64(count(x.samples, failed)) / allowed
}

// steadyChecks holds every run to its objective before the fault, and
// asks that it come back after.
func steadyChecks(x *experiment) []Check {
	a, p99, ok := meetsSLO(x.answeredBefore(x.faultStart), x.run.SLO)
	checks := []Check{{
		Name: "steady state before the fault meets the SLO",
		Want: fmt.Sprintf("availability ≥ %.1f%%, p99 ≤ %v", 100*x.run.SLO.Availability, x.run.SLO.P99),
		Got:  fmt.Sprintf("%.2f%%, p99 %v", 100*a, p99.Round(time.Millisecond)),
		OK:   ok,
	}}
	got, within := "never", x.phases.Recovery-time.Second
	if x.run.Recover != nil {
		got = x.run.Recover.Round(100 * time.Millisecond).String()
	}
	return append(checks, Check{
		Name: "the SLO holds again after the fault",
		Want: fmt.Sprintf("within %v of its end", within),
		Got:  got,
		OK:   x.run.Recover != nil && *x.run.Recover <= within,
	})
}

// invariants waits for the reconciler, then audits the money.
func invariants(ctx context.Context, env *Env, acked *acks) ([]Check, error) {
	db, err := env.Primary()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	wait, cancel := context.WithTimeout(ctx, settleWithin)
	defer cancel()
	began := time.Now()
	left, err := paymentsaudit.WaitSettled(wait, db)
	if err != nil {
		return nil, err
	}
	payments, refunds, twice := acked.snapshot()
	f, err := paymentsaudit.Audit(ctx, db, env.Provider.Charges(), env.Provider.Refunds(),
		paymentsaudit.Acknowledged{Payments: payments, Refunds: refunds})
	if err != nil {
		return nil, err
	}
	none := func(name string, bad []string, want string) Check {
		got := "none"
		if len(bad) > 0 {
			got = fmt.Sprintf("%d, e.g. %s", len(bad), bad[0])
		}
		return Check{Name: name, Want: want, Got: got, OK: len(bad) == 0}
	}
	return []Check{
		{
			Name: "charges equal succeeded payments", Want: "equal",
			Got: fmt.Sprintf("%d charges, %d succeeded payments", f.Charges, f.Succeeded),
			OK:  f.Charges == f.Succeeded,
		},
		{
			Name: "provider refunds equal succeeded refunds", Want: "equal",
			Got: fmt.Sprintf("%d refunds, %d succeeded refunds", f.ProviderRefunds, f.RefundsSucceeded),
			OK:  f.ProviderRefunds == f.RefundsSucceeded,
		},
		none("no key charged twice", append(f.ChargedTwice, twice...), "none"),
		none("ledger and Postgres agree", f.Unbalanced, "no difference"),
		none("every 2xx answer is in Postgres", f.Missing, fmt.Sprintf("all %d payments and %d refunds", len(payments), len(refunds))),
		none("no payment refunded above its amount", f.OverRefunded, "none"),
		{
			Name: "nothing left processing after reconciliation", Want: fmt.Sprintf("0 within %v", settleWithin),
			Got: fmt.Sprintf("%d after %v", left, time.Since(began).Round(100*time.Millisecond)),
			OK:  left == 0 && len(f.Unsettled) == 0,
		},
	}, nil
}
