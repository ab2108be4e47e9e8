package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/resiliencekit/payservice/observability"
)

// baseConfig is the instances' configuration for every scenario: the
// service's defaults scaled down so that a fault, its detection and its
// recovery fit in seconds (the timing rules still hold: a lease and the
// reconciler's delays outlast REQUEST_TIMEOUT + SETTLE_TIMEOUT), and the
// provider's protections sized to the provider: 2 instances × 2 calls in
// flight, 40 calls a second each, for a provider that works on 4 calls at
// once, 50 ms each (80 a second).
var baseConfig = map[string]string{
	"REQUEST_TIMEOUT": "4s", "SETTLE_TIMEOUT": "1s", "PROVIDER_TIMEOUT": "1s",
	"HTTP_WRITE_TIMEOUT": "7s", "HTTP_READ_TIMEOUT": "5s",
	"IDEMPOTENCY_LEASE": "6s", "RECONCILE_INTERVAL": "1s", "RECONCILE_AFTER": "6s", "RECONCILE_GRACE": "7s",
	"PROVIDER_BREAKER_WINDOW": "5s", "PROVIDER_BREAKER_MIN_REQUESTS": "5", "PROVIDER_BREAKER_OPEN_TIMEOUT": "2s",
	"PROVIDER_BREAKER_HALF_OPEN_PROBES":    "1",
	"PROVIDER_RETRY_MAX_RETRY_AFTER":       "1s",
	"PROVIDER_RETRY_BUDGET_MIN_PER_SECOND": "1", "PROVIDER_RETRY_BUDGET_CAPACITY": "2",
	"PROVIDER_BULKHEAD_CONCURRENCY": "2", "PROVIDER_BULKHEAD_QUEUE": "2",
	"PROVIDER_RATE_LIMIT": "40", "PROVIDER_RATE_BURST": "10",
	"REDIS_TIMEOUT": "100ms", "REDIS_BREAKER_OPEN_TIMEOUT": "1s",
	"DB_MAX_OPEN_CONNS": "10", "DB_MAX_IDLE_CONNS": "10",
	"SHUTDOWN_DRAIN_DELAY": "1s", "SHUTDOWN_TIMEOUT": "5s",
	"RATE_LIMIT_PER_SECOND": "10000", "RATE_LIMIT_BURST": "10000",
	"DATABASE_REPLICA_MAX_LAG": "1s",
}

// Provider capacity: normal, and the overload scenario's.
const (
	providerSlots = 4
	providerHold  = 50 * time.Millisecond
)

// baseRate is the load's steady rate, requests a second: about 14 provider
// calls a second, under a fifth of its capacity.
const baseRate = 20

// The objectives every run is held to: the service's own, for creating a
// payment (most of the load), as observability/slos.yaml declares them
// for its alerts and dashboard.
const (
	availabilitySLO = "create-payment-availability"
	latencySLO      = "create-payment-latency"
)

// serviceSLO reads the game day's objective from slos.yaml: availability,
// and the latency threshold as the p99 bound, which the latency SLO must
// then be (99% of requests within it).
func serviceSLO() (SLO, error) {
	a, err := observability.SLOByName(availabilitySLO)
	if err != nil {
		return SLO{}, err
	}
	l, err := observability.SLOByName(latencySLO)
	if err != nil {
		return SLO{}, err
	}
	if a.SLI != observability.Availability || l.SLI != observability.Latency || l.Objective != 99 {
		return SLO{}, fmt.Errorf("slos.yaml: the game day needs %s to be an availability SLO and %s a latency SLO of 99%% (its threshold is the p99 bound)", availabilitySLO, latencySLO)
	}
	return SLO{Availability: a.Ratio(), P99: time.Duration(l.Threshold)}, nil
}

// scenarios are the game day's experiments, in the order they run. The
// failover is last: it leaves the standby as the only server.
func scenarios(slo SLO) []Scenario {
	return []Scenario{
		providerOutage(slo), providerErrors(slo), providerSlow(slo), overload(slo),
		postgresDegraded(slo), redisDown(slo), instanceKilled(slo), rollingRestart(slo),
		replicaLag(slo), failover(slo),
	}
}

func providerOutage(slo SLO) Scenario {
	return Scenario{
		Name: "provider-outage", Title: "The provider stops answering",
		Fault: "the provider's connections go silent: requests reach nothing and no answer comes (a black hole)",
		Hypothesis: "The provider breaker opens within 4 s (5 calls must time out first, 2 at a time per " +
			"instance); while it is open payment requests are refused " +
			"in milliseconds (503 with Retry-After) instead of each waiting out PROVIDER_TIMEOUT per attempt; " +
			"the payments whose outcome is unknown answer 202 and are settled by the reconciler; when the " +
			"provider is back, payments succeed again within 3 s.",
		SLO:     slo,
		Pattern: "breaker", NeutraliseText: "PROVIDER_BREAKER_MIN_REQUESTS=100000 (its maximum): the breaker never trips",
		Neutralise: map[string]string{"PROVIDER_BREAKER_MIN_REQUESTS": "100000"},
		Inject: func(ctx context.Context, x *experiment) error {
			return withToxic(ctx, x, proxyProvider, `{"name":"blackhole","type":"timeout","stream":"upstream","attributes":{"timeout":0}}`)
		},
		Checks: func(x *experiment) []Check {
			opened := x.faultEnd
			if x.run.Detect != nil {
				opened = x.faultStart + *x.run.Detect + Step
			}
			open := x.window(opened, x.faultEnd)
			return []Check{
				detectedWithin(x, 4*time.Second),
				p99Of(open, "refusals once the breaker is open", is503, fastRefusal),
			}
		},
	}
}

func providerErrors(slo SLO) Scenario {
	return Scenario{
		Name: "provider-errors", Title: "The provider flaps",
		Fault: "the provider refuses connections 200 ms out of every 500 ms (its proxy stopped, cutting the connections open, and started again)",
		Hypothesis: "Retries recover part of the failed calls, but the retry budget keeps the attempts per " +
			"call within its law, 1 + 20% + (1 a second per instance × seconds + a reserve of 2 per " +
			"instance) / calls: a failing dependency is not hit much harder than the traffic hits the service.",
		SLO:     slo,
		Pattern: "retry budget", NeutraliseText: "PROVIDER_RETRY_BUDGET_RATIO=10, _MIN_PER_SECOND and _CAPACITY 100000: every failed attempt is retried",
		Neutralise: map[string]string{
			"PROVIDER_RETRY_BUDGET_RATIO": "10", "PROVIDER_RETRY_BUDGET_MIN_PER_SECOND": "100000",
			"PROVIDER_RETRY_BUDGET_CAPACITY": "100000",
		},
		Inject: func(ctx context.Context, x *experiment) error {
			p := x.env.Proxy(proxyProvider)
			defer func() { _ = p.Start() }()
			for end := time.Now().Add(x.phases.Fault); time.Now().Before(end); {
				p.Stop()
				if err := sleep(ctx, 200*time.Millisecond); err != nil {
					return err
				}
				if err := p.Start(); err != nil {
					return err
				}
				if err := sleep(ctx, 300*time.Millisecond); err != nil {
					return err
				}
			}
			return nil
		},
		Checks: func(x *experiment) []Check {
			return []Check{attemptsPerCall(x)}
		},
	}
}

func providerSlow(slo SLO) Scenario {
	const hold = 700 * time.Millisecond
	return Scenario{
		Name: "provider-slow", Title: "The provider slows down",
		Fault: "each provider call takes 700 ms instead of 50 ms: its 4 slots now serve under 6 calls a second, against about 14 offered",
		Hypothesis: "The bulkhead keeps the calls in flight within what the provider can serve (2 per " +
			"instance, 2 waiting) and refuses the excess at once, so the calls it lets through finish " +
			"within PROVIDER_TIMEOUT: at most 10% of the payments sent during the fault end unknown (202).",
		SLO:     slo,
		Pattern: "bulkhead", NeutraliseText: "PROVIDER_BULKHEAD_CONCURRENCY=10000, PROVIDER_BULKHEAD_QUEUE=100000",
		Neutralise: map[string]string{"PROVIDER_BULKHEAD_CONCURRENCY": "10000", "PROVIDER_BULKHEAD_QUEUE": "100000"},
		Inject: func(ctx context.Context, x *experiment) error {
			x.env.Capacity.Set(providerSlots, hold)
			defer x.env.Capacity.Set(providerSlots, providerHold)
			return x.hold(ctx)
		},
		Checks: func(x *experiment) []Check {
			fault := x.window(x.faultStart, x.faultEnd)
			creates := count(fault, func(s sample) bool { return s.Op == opCreate && !s.Retry })
			unknown := count(fault, func(s sample) bool { return s.Op == opCreate && !s.Retry && s.Status == 202 })
			share := float64(unknown) / float64(max(creates, 1))
			return []Check{
				{
					Name: "payments sent during the fault that ended unknown (202)", Want: "≤ 10%",
					Got: fmt.Sprintf("%.0f%% (%d of %d)", 100*share, unknown, creates), OK: share <= 0.10,
				},
				p99Of(fault, "answers during the fault", answered, 4500*time.Millisecond),
			}
		},
	}
}

func overload(slo SLO) Scenario {
	const (
		capacity = 10.0               // provider calls a second: 1 slot, 100 ms each
		steady   = 8.0                // requests a second: about 6 provider calls
		surge    = 3 * capacity / 0.7 // 7 in 10 requests call the provider
	)
	return Scenario{
		Name: "overload", Title: "Three times the provider's capacity",
		Fault: "the load rises to 3 times what the provider can serve (1 call at once, 100 ms each: 10 a second)",
		Hypothesis: "Goodput holds near the provider's capacity (at least 70% of it) while the excess is " +
			"refused fast (p50 of 503s ≤ 250 ms), and charged payments keep a p99 under 1.5 s.",
		SLO: slo,
		Env: map[string]string{
			"PROVIDER_BULKHEAD_CONCURRENCY": "1", "PROVIDER_BULKHEAD_QUEUE": "1",
			"PROVIDER_RATE_LIMIT": "5", "PROVIDER_RATE_BURST": "2",
		},
		Pattern: "egress limit and bulkhead", NeutraliseText: "PROVIDER_RATE_LIMIT and _BURST 100000, PROVIDER_BULKHEAD_CONCURRENCY 10000, _QUEUE 100000",
		Neutralise: map[string]string{
			"PROVIDER_RATE_LIMIT": "100000", "PROVIDER_RATE_BURST": "100000",
			"PROVIDER_BULKHEAD_CONCURRENCY": "10000", "PROVIDER_BULKHEAD_QUEUE": "100000",
		},
		Setup: func(_ context.Context, x *experiment) error {
			x.env.Capacity.Set(1, 100*time.Millisecond)
			x.load.SetRate(steady)
			return nil
		},
		Teardown: func(_ context.Context, x *experiment) error {
			x.env.Capacity.Set(providerSlots, providerHold)
			return nil
		},
		Inject: func(ctx context.Context, x *experiment) error {
			x.load.SetRate(surge)
			defer x.load.SetRate(steady)
			return x.hold(ctx)
		},
		Checks: func(x *experiment) []Check {
			fault := x.window(x.faultStart, x.faultEnd)
			charged := count(fault, func(s sample) bool { return s.Status == 201 && s.Op != opDuplicate })
			good := float64(charged) / (x.faultEnd - x.faultStart).Seconds()
			return []Check{
				{
					Name: "goodput during the overload", Want: fmt.Sprintf("≥ %.0f/s (70%% of capacity)", 0.7*capacity),
					Got: fmt.Sprintf("%.1f/s", good), OK: good >= 0.7*capacity,
				},
				p50Of(fault, "refusals", is503, fastRefusal),
				p99Of(fault, "charged payments", func(s sample) bool { return s.Status == 201 && s.Op == opCreate && !s.Retry }, 1500*time.Millisecond),
			}
		},
	}
}

func postgresDegraded(slo SLO) Scenario {
	return Scenario{
		Name: "postgres-degraded", Title: "Postgres slows down, then resets connections",
		Fault: "100 ms more on every Postgres packet, then 30% of Postgres connections reset",
		Hypothesis: "Requests slow down or fail cleanly (503, never a 500 or a hang); replays of answered " +
			"requests are still served from Redis in milliseconds; no acknowledged payment is lost.",
		SLO:     slo,
		Pattern: "idempotency fast path", NeutraliseText: "REDIS_URL pointed at a closed port: every key is checked in Postgres",
		Neutralise: map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0"},
		Inject: func(ctx context.Context, x *experiment) error {
			half := x.phases.Fault / 2
			if err := withToxicFor(ctx, x, proxyPrimary, `{"name":"slow","type":"latency","attributes":{"latency":100}}`, half); err != nil {
				return err
			}
			return withToxicFor(ctx, x, proxyPrimary, `{"name":"reset","type":"reset_peer","toxicity":0.3,"attributes":{"timeout":0}}`, x.phases.Fault-half)
		},
		Checks: func(x *experiment) []Check {
			fault := x.window(x.faultStart, x.faultEnd)
			errors5xx := count(x.samples, func(s sample) bool { return s.Status >= 500 && s.Status != 503 })
			return []Check{
				{Name: "no 500s", Want: "0", Got: fmt.Sprint(errors5xx), OK: errors5xx == 0},
				p50Of(fault, "replays during the fault", func(s sample) bool { return s.Op == opDuplicate && s.Status < 300 }, 50*time.Millisecond),
			}
		},
	}
}

func redisDown(slo SLO) Scenario {
	return Scenario{
		Name: "redis-down", Title: "Redis is killed, comes back empty, and is flushed",
		Fault: "Redis's container is killed; a third of the fault window later it starts again, empty; a third later it is flushed",
		Hypothesis: "Readiness says degraded, not down (no instance leaves the balancer); payments go on " +
			"through Postgres alone with the SLO held; no key is charged twice after Redis forgot it.",
		SLO: slo,
		Inject: func(ctx context.Context, x *experiment) error {
			third := x.phases.Fault / 3
			if err := x.env.StopRedis(ctx); err != nil {
				return err
			}
			x.event("redis killed")
			if err := sleep(ctx, third); err != nil {
				return err
			}
			if err := x.env.StartRedis(ctx); err != nil {
				return err
			}
			x.event("redis started, empty")
			if err := sleep(ctx, third); err != nil {
				return err
			}
			if err := x.env.FlushRedis(ctx); err != nil {
				return err
			}
			x.event("redis flushed")
			return sleep(ctx, x.phases.Fault-2*third)
		},
		Checks: func(x *experiment) []Check {
			a, p99, ok := meetsSLO(x.window(x.faultStart, x.faultEnd), x.run.SLO)
			notReady, degradedSeen := false, false
			for _, p := range x.readings {
				if p.at >= x.faultStart && p.at < x.faultEnd {
					notReady = notReady || p.ready+p.degraded < 2
					degradedSeen = degradedSeen || p.degraded == 2
				}
			}
			inBalancer := "always"
			if notReady {
				inBalancer = "one was not ready"
			}
			return []Check{
				{Name: "the SLO holds while Redis is down", Want: "held", Got: fmt.Sprintf("%.2f%%, p99 %v", 100*a, p99.Round(time.Millisecond)), OK: ok},
				{Name: "both instances stay in the balancer (ready or degraded)", Want: "always", Got: inBalancer, OK: !notReady},
				{Name: "readiness says degraded while Redis is down", Want: "both instances at once", Got: fmt.Sprint(degradedSeen), OK: degradedSeen},
			}
		},
	}
}

func instanceKilled(slo SLO) Scenario {
	return Scenario{
		Name: "instance-killed", Title: "An instance is killed mid-load",
		Fault: "instance b gets SIGKILL; it is started again halfway through the fault window",
		Hypothesis: "Only the requests in flight on b fail; their clients' retries with the same key succeed " +
			"on a; the reconciler settles what b left processing; no key is charged twice.",
		SLO: slo,
		Inject: func(ctx context.Context, x *experiment) error {
			b := x.env.Apps()[1]
			if err := b.stop(ctx, true); err != nil {
				return err
			}
			x.event("instance b killed")
			if err := sleep(ctx, x.phases.Fault/2); err != nil {
				return err
			}
			if err := b.start(ctx, x.env.current); err != nil {
				return err
			}
			x.event("instance b started")
			return sleep(ctx, x.phases.Fault/2)
		},
		Checks: func(x *experiment) []Check {
			late := x.window(x.faultStart+time.Second, x.faultEnd)
			n := count(late, failed)
			return []Check{{
				Name: "failures stop within 1 s of the kill", Want: "0 failed requests sent later",
				Got: fmt.Sprint(n), OK: n == 0,
			}}
		},
	}
}

func rollingRestart(slo SLO) Scenario {
	return Scenario{
		Name: "rolling-restart", Title: "A rolling restart under load",
		Fault: "each instance in turn gets SIGTERM, drains, exits and is started again",
		Hypothesis: "Zero failed requests: readiness turns not-ready at SIGTERM, the balancer stops " +
			"sending within a probe, and the drain delay lets in-flight and late requests finish.",
		SLO:     slo,
		Pattern: "drain delay", NeutraliseText: "SHUTDOWN_DRAIN_DELAY=0s: the listener closes at SIGTERM",
		Neutralise: map[string]string{"SHUTDOWN_DRAIN_DELAY": "0s"},
		Inject: func(ctx context.Context, x *experiment) error {
			for _, a := range x.env.Apps() {
				x.event("instance %s: SIGTERM", a.name)
				if err := a.stop(ctx, false); err != nil {
					return err
				}
				if err := a.start(ctx, x.env.current); err != nil {
					return err
				}
				x.event("instance %s started", a.name)
				if err := x.env.Balancer.waitReady(ctx, a); err != nil {
					return err
				}
			}
			return nil
		},
		Checks: func(x *experiment) []Check {
			n := count(x.samples, failed)
			return []Check{{Name: "failed requests during the rollout", Want: "0", Got: fmt.Sprint(n), OK: n == 0}}
		},
	}
}

func replicaLag(slo SLO) Scenario {
	return Scenario{
		Name: "replica-lag", Title: "The read replica falls behind",
		Fault: "the standby pauses replay (pg_wal_replay_pause): it stops applying what it receives",
		Hypothesis: "Within DATABASE_REPLICA_MAX_LAG (1 s) reads move to the primary: no read shows a payment " +
			"without a refund acknowledged more than 1 s before it; younger writes may not show yet, which " +
			"is what bounded staleness allows.",
		SLO:     slo,
		Pattern: "replica staleness bound", NeutraliseText: "DATABASE_REPLICA_MAX_LAG=1h: the replica keeps every read however far behind",
		Neutralise: map[string]string{"DATABASE_REPLICA_MAX_LAG": "1h"},
		Inject: func(ctx context.Context, x *experiment) error {
			db, err := x.env.Standby()
			if err != nil {
				return err
			}
			defer db.Close()
			if _, err := db.ExecContext(ctx, `SELECT pg_wal_replay_pause()`); err != nil {
				return err
			}
			defer resumeReplay(db)
			return x.hold(ctx)
		},
		Checks: func(x *experiment) []Check {
			n := count(x.samples, func(s sample) bool { return s.Stale })
			return []Check{{Name: "reads missing a write acknowledged over 1 s earlier", Want: "0", Got: fmt.Sprint(n), OK: n == 0}}
		},
	}
}

func resumeReplay(db *sql.DB) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = db.ExecContext(ctx, `SELECT pg_wal_replay_resume()`)
}

func failover(slo SLO) Scenario {
	return Scenario{
		Name: "postgres-failover", Title: "The Postgres primary dies and the standby is promoted",
		Fault: "the primary's container is killed; 1 s later the standby is promoted (pg_promote)",
		Hypothesis: "Writes resume within 3 s of the promotion; no acknowledged payment is lost " +
			"(replication is synchronous); keys retried across the failover are charged once.",
		SLO: slo,
		Inject: func(ctx context.Context, x *experiment) error {
			if err := x.env.KillPrimary(ctx); err != nil {
				return err
			}
			x.event("primary killed")
			if err := sleep(ctx, time.Second); err != nil {
				return err
			}
			if err := x.env.Promote(ctx); err != nil {
				return err
			}
			x.event("standby promoted")
			return nil
		},
		Checks: func(x *experiment) []Check {
			killed, _ := x.eventAt("primary killed")
			promoted, _ := x.eventAt("standby promoted")
			return []Check{
				writesResumed(x, promoted, "after the promotion", 3*time.Second),
				writesResumed(x, killed, "after the primary died (the write outage)", 5*time.Second),
				retriedAcrossChargedOnce(x),
			}
		},
	}
}

// writesResumed measures from since to the answer of the first new payment
// sent after it that was charged: a first attempt with a new key, which
// Postgres had to write (a retry may be answered from an earlier write).
func writesResumed(x *experiment, since time.Duration, what string, bound time.Duration) Check {
	first := time.Duration(-1)
	for _, s := range x.samples {
		sent := s.Sent.Sub(x.start)
		if s.Op == opCreate && !s.Retry && s.Status == 201 && sent >= since && (first < 0 || sent+s.Latency < first) {
			first = sent + s.Latency
		}
	}
	got := "never"
	if first >= 0 {
		got = (first - since).Round(10 * time.Millisecond).String()
	}
	return Check{Name: "writes resume " + what, Want: "within " + bound.String(), Got: got, OK: first >= 0 && first-since <= bound}
}

// retriedAcrossChargedOnce follows the keys whose create failed or got no
// answer before the promotion and was sent again after it: the payments a
// key was ever answered with must hold one charge between them.
func retriedAcrossChargedOnce(x *experiment) Check {
	before, after := map[string]bool{}, map[string]bool{}
	for _, s := range x.samples {
		if s.Op != opCreate {
			continue
		}
		switch sent := s.Sent.Sub(x.start); {
		case sent < x.faultEnd && (s.Status == 0 || s.Status >= 500):
			before[s.Key] = true
		case sent >= x.faultEnd && s.Retry:
			after[s.Key] = true
		}
	}
	across, twice := 0, 0
	for key := range before {
		if !after[key] {
			continue
		}
		across++
		charges := 0
		for _, id := range x.acks.paymentsOf(key) {
			charges += len(x.env.Provider.ChargesByKey(id))
		}
		if charges > 1 {
			twice++
		}
	}
	return Check{
		Name: "keys retried across the failover, charged more than once", Want: "0",
		Got: fmt.Sprintf("%d of %d", twice, across), OK: twice == 0,
	}
}

// withToxic adds a toxic to a proxy for the fault phase.
func withToxic(ctx context.Context, x *experiment, proxy, toxic string) error {
	return withToxicFor(ctx, x, proxy, toxic, x.phases.Fault)
}

func withToxicFor(ctx context.Context, x *experiment, proxy, toxic string, d time.Duration) error {
	p := x.env.Proxy(proxy)
	t, err := p.Toxics.AddToxicJson(strings.NewReader(toxic))
	if err != nil {
		return fmt.Errorf("toxic %s on %s: %w", toxic, proxy, err)
	}
	defer func() { _ = p.Toxics.RemoveToxic(context.Background(), t.Name) }()
	return sleep(ctx, d)
}

func is503(s sample) bool    { return s.Status == 503 }
func answered(s sample) bool { return s.Status != 0 }

func p99Of(samples []sample, what string, keep func(sample) bool, bound time.Duration) Check {
	return quantileCheck(samples, "p99 of "+what, 0.99, keep, bound)
}

func p50Of(samples []sample, what string, keep func(sample) bool, bound time.Duration) Check {
	return quantileCheck(samples, "p50 of "+what, 0.5, keep, bound)
}

func quantileCheck(samples []sample, name string, q float64, keep func(sample) bool, bound time.Duration) Check {
	n := count(samples, func(s sample) bool { return s.Status != 0 && keep(s) })
	if n == 0 {
		return Check{Name: name, Want: "≤ " + bound.String(), Got: "no such requests", OK: false}
	}
	v := percentile(samples, q, keep)
	return Check{Name: name, Want: "≤ " + bound.String(), Got: fmt.Sprintf("%v (%d requests)", v.Round(time.Millisecond), n), OK: v <= bound}
}

func detectedWithin(x *experiment, bound time.Duration) Check {
	got, ok := "never", false
	if x.run.Detect != nil {
		got, ok = x.run.Detect.Round(10*time.Millisecond).String(), *x.run.Detect <= bound
	}
	return Check{Name: "detected (breaker or readiness changed)", Want: "within " + bound.String(), Got: got, OK: ok}
}

// The retry budget of baseConfig, for its law.
const (
	budgetRatio     = 0.2
	budgetPerSecond = 1
	budgetReserve   = 2
	instances       = 2
)

// attemptsPerCall is the provider retrier's attempts per call during the
// fault, from the instances' metrics, against what the retry budget
// allows: a share of the calls, a trickle a second, and a small reserve.
func attemptsPerCall(x *experiment) Check {
	var first, last *protections
	for i := range x.readings {
		p := &x.readings[i]
		if p.at >= x.faultStart && first == nil {
			first = p
		}
		if p.at <= x.faultEnd {
			last = p
		}
	}
	name := "provider attempts per call during the fault"
	if first == nil || last == nil || last.calls <= first.calls {
		return Check{Name: name, Want: "some calls", Got: "no calls measured", OK: false}
	}
	calls := last.calls - first.calls
	seconds := (last.at - first.at).Seconds()
	bound := 1 + budgetRatio + (budgetPerSecond*instances*seconds+budgetReserve*instances)/calls
	ratio := (last.attempts - first.attempts) / calls
	return Check{
		Name: name, Want: fmt.Sprintf("≤ %.2f (the budget's law for %.0f calls in %.1f s)", bound, calls, seconds),
		Got: fmt.Sprintf("%.2f", ratio), OK: ratio <= bound,
	}
}
