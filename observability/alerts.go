package observability

import (
	"fmt"
	"maps"
	"time"

	"github.com/prometheus/common/model"

	"github.com/resiliencekit/payservice/internal/app"
)

// runbooks is the file every alert's runbook annotation points into; a
// test checks that each anchor is one of its headings.
const runbooks = "docs/runbooks.md"

func runbook(anchor string) string { return runbooks + "#" + anchor }

// pattern is an alert on one resilience pattern: Signal, compared by
// Condition, for For. Signal must return data whenever the service
// runs (the live test checks it does), so that a renamed metric breaks a
// test rather than silently silence the alert.
type pattern struct {
	Name      string
	Signal    string
	Condition string
	// And, when set, is a second signal the first must meet too, compared
	// by AndCondition and joined on the labels in On.
	And, AndCondition, On string
	For                   time.Duration
	Severity              string
	// Labels are static labels besides severity.
	Labels  map[string]string
	Summary string
	// Runbook is the anchor of the alert's paragraph in docs/runbooks.md.
	Runbook string
}

// patternAlerts returns the alerts on the patterns. Thresholds that are
// settings of the service (a breaker's open timeout, the reconciler's
// grace, the replica's tolerated lag) are taken from its defaults:
// regenerate the rules (`make generate`) after changing a default, and
// adjust them by hand where a deployment overrides one.
func patternAlerts(cfg app.Config) []Rule {
	breakers := []struct {
		name string
		open time.Duration
	}{
		{"provider", cfg.Provider.Protections.Breaker.OpenTimeout},
		{"redis", cfg.Redis.Breaker.OpenTimeout},
	}
	var ps []pattern
	for _, b := range breakers {
		// An open breaker probes after its open timeout; one that has
		// not closed after three of them faces a dependency that is
		// down, not one that blipped.
		ps = append(ps, pattern{
			Name: "BreakerOpenTooLong", Signal: fmt.Sprintf(`max by (name) (%s{name=%q})`, metric("breaker_state"), b.name), Condition: "> 0",
			For: 3 * b.open, Severity: "page", Runbook: "breaker-open-too-long",
			// Its own label, so the two rules differ by more than their
			// expressions: Prometheus warns of duplicates otherwise.
			Labels:  map[string]string{"breaker": b.name},
			Summary: fmt.Sprintf("The %s breaker has not closed for 3 × its open timeout (%v): calls to %s fail fast.", b.name, model.Duration(b.open), b.name),
		})
	}
	ps = append(ps,
		pattern{
			Name: "RetryBudgetExhausted", Signal: fmt.Sprintf(`sum by (name) (rate(%s[5m]))`, metric("retry_budget_exhausted_total")), Condition: "> 0",
			For: 5 * time.Minute, Severity: "ticket", Runbook: "retry-budget-exhausted",
			Summary: "Retries to {{ $labels.name }} are being dropped: the retry budget is spent, so failures reach clients on their first attempt.",
		},
		pattern{
			Name: "BulkheadRejecting", Signal: fmt.Sprintf(`sum by (name) (rate(%s{reason="full"}[5m]))`, metric("bulkhead_rejections_total")), Condition: "> 0",
			For: 5 * time.Minute, Severity: "ticket", Runbook: "bulkhead-rejecting",
			Summary: "The {{ $labels.name }} bulkhead is full and refusing calls (503).",
		},
		pattern{
			Name: "ClientRateLimited", Signal: fmt.Sprintf(`sum by (client, limiter) (rate(%s[5m]))`, metric("http_ratelimited_total")), Condition: "> 1",
			For: 10 * time.Minute, Severity: "ticket", Runbook: "client-rate-limited",
			Summary: "Client {{ $labels.client }} has had more than one request a second refused (429) for 10 minutes.",
		},
		pattern{
			Name: "IdempotencyStoreErrors", Signal: fmt.Sprintf(`sum(rate(%s[5m]))`, metric("idempotency_store_errors_total")), Condition: "> 0",
			For: 10 * time.Minute, Severity: "ticket", Runbook: "idempotency-store-errors",
			Summary: "The idempotency store (Redis) is failing: requests are served through Postgres alone, slower.",
		},
		pattern{
			Name: "ReconcilerBacklogStale", Signal: fmt.Sprintf(`max by (kind) (%s)`, metric("reconciler_oldest_seconds")), Condition: fmt.Sprintf("> %s", formatFloat(cfg.Reconciler.Grace.Seconds())),
			For: 5 * time.Minute, Severity: "page", Runbook: "reconciler-backlog-stale",
			Summary: fmt.Sprintf("A %s has been processing for longer than the reconciler's grace (%v): its outcome is unknown to the client.", "{{ $labels.kind }}", model.Duration(cfg.Reconciler.Grace)),
		},
		pattern{
			Name: "ReconcilerNoLeader", Signal: fmt.Sprintf(`sum(%s)`, metric("reconciler_leader")), Condition: "< 1",
			For: 5 * time.Minute, Severity: "ticket", Runbook: "reconciler-no-leader",
			Summary: "No replica leads the reconciler: payments left processing are not being settled.",
		},
		pattern{
			Name:   "PostgresPoolSaturated",
			Signal: `max by (instance, db_name) (go_sql_in_use_connections / (go_sql_max_open_connections > 0))`, Condition: ">= 0.9",
			And: `sum by (instance, db_name) (rate(go_sql_wait_count_total[5m]))`, AndCondition: "> 0", On: "instance, db_name",
			For: 5 * time.Minute, Severity: "ticket", Runbook: "postgres-pool-saturated",
			Summary: "The {{ $labels.db_name }} pool of {{ $labels.instance }} is at least 90% in use and requests wait for a connection.",
		},
		pattern{
			Name: "ReplicaLagging", Signal: fmt.Sprintf(`max(%s)`, metric("postgres_replica_lag_seconds")), Condition: fmt.Sprintf("> %s", formatFloat(cfg.Postgres.ReplicaMaxLag.Seconds())),
			For: 5 * time.Minute, Severity: "ticket", Runbook: "replica-lagging",
			Summary: fmt.Sprintf("The read replica lags by more than %v: reads that may be stale go to the primary.", model.Duration(cfg.Postgres.ReplicaMaxLag)),
		},
		pattern{
			Name: "ReadinessFlapping", Signal: fmt.Sprintf(`sum by (instance) (increase(%s[15m]))`, metric("health_ready_changes_total")), Condition: "> 4",
			Severity: "ticket", Runbook: "readiness-flapping",
			Summary: "{{ $labels.instance }} changed readiness more than 4 times in 15 minutes: it keeps leaving and rejoining the load balancer.",
		},
	)
	rules := make([]Rule, 0, len(ps))
	for _, p := range ps {
		expr := p.Signal + " " + p.Condition
		signals := []string{p.Signal}
		if p.And != "" {
			expr = fmt.Sprintf("%s\nand on(%s)\n%s %s", expr, p.On, p.And, p.AndCondition)
			signals = append(signals, p.And)
		}
		labels := map[string]string{"severity": p.Severity}
		maps.Copy(labels, p.Labels)
		rules = append(rules, Rule{
			Alert: p.Name, Expr: expr, For: model.Duration(p.For),
			Labels:      labels,
			Annotations: map[string]string{"summary": p.Summary, "runbook": runbook(p.Runbook)},
			signals:     signals,
		})
	}
	return rules
}
