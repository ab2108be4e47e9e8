package observability

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/resiliencekit/payservice/internal/app"
)

// The series the SLO recording rules write. Each carries the labels slo
// (the SLO's name) and sli (availability or latency); the dashboard and
// the burn-rate alerts read them.
const (
	// recRequests is the SLO's requests a second over a window:
	// slo:requests:rate1h.
	recRequests = "slo:requests:rate"
	// recErrorRatio is the share of the SLO's requests that were bad
	// over a window: slo:error_ratio:rate5m.
	recErrorRatio = "slo:error_ratio:rate"
	// recObjective is the objective as a ratio (0.999), so that alerts
	// and panels derive thresholds from it rather than repeat it.
	recObjective = "slo:objective"
)

// The alerts on the error budget: one per severity for every SLO, told
// apart by their slo label.
const (
	alertBurnPage   = "ErrorBudgetBurnFast"
	alertBurnTicket = "ErrorBudgetBurnSlow"
)

// Rule is one Prometheus rule as the rule file spells it.
type Rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         model.Duration    `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`

	// signals are the queries an alert compares with its threshold:
	// each must return data while the service runs, or the alert is
	// watching a series that does not exist and can never fire.
	signals []string
}

// RuleGroup is a group of rules evaluated together.
type RuleGroup struct {
	Name  string `yaml:"name"`
	Rules []Rule `yaml:"rules"`
}

// metric is the name the service exports a metric under: every one of
// its own carries the service's name as a prefix.
func metric(name string) string { return app.Name + "_" + name }

// RuleGroups returns every rule: the SLIs recorded from slos.yaml, the
// burn-rate alerts on them, and the alerts on the patterns themselves.
func RuleGroups() ([]RuleGroup, error) {
	f, err := LoadSLOs()
	if err != nil {
		return nil, err
	}
	// The burn-rate alerts share the recordings' group: a group runs its
	// rules in order, so each alert reads the recordings of its own
	// evaluation. In groups of their own, the alerts could run first and
	// read the previous evaluation's, and with an interval longer than
	// Prometheus' 5-minute lookback (promtool's ticket test evaluates
	// every 10 minutes) find none at all.
	return []RuleGroup{
		{Name: "slo", Rules: append(sloRecordings(f), burnAlerts(f)...)},
		{Name: "pattern-alerts", Rules: patternAlerts(app.Default())},
	}, nil
}

// sloRecordings records, for each SLO, its objective and, over every
// window an alert looks at, its request rate and error ratio.
func sloRecordings(f *SLOFile) []Rule {
	var rules []Rule
	for _, s := range f.SLOs {
		labels := map[string]string{"slo": s.Name, "sli": s.SLI}
		rules = append(rules, Rule{Record: recObjective, Expr: fmt.Sprintf("vector(%s)", formatFloat(s.Ratio())), Labels: labels})
		for _, w := range f.windows() {
			rules = append(rules,
				Rule{Record: recRequests + w.String(), Expr: requestRate(s, w), Labels: labels},
				Rule{Record: recErrorRatio + w.String(), Expr: errorRatio(s, w), Labels: labels})
		}
	}
	return rules
}

// selector matches the SLO's requests in the HTTP metrics.
func selector(s SLO, extra ...string) string {
	return "{" + strings.Join(append([]string{fmt.Sprintf("route=%q", s.Route), fmt.Sprintf("method=%q", s.Method)}, extra...), ", ") + "}"
}

func requestRate(s SLO, w model.Duration) string {
	return fmt.Sprintf("sum(rate(%s%s[%s]))", metric("http_requests_total"), selector(s), w)
}

// errorRatio is the share of bad requests. Where no request was bad the
// numerator has no series at all: "or vector(0)" makes it zero, so that
// a healthy SLO records 0 rather than nothing. Where there were no
// requests the ratio is undefined and nothing is recorded: no traffic
// burns no budget.
func errorRatio(s SLO, w model.Duration) string {
	switch s.SLI {
	case Latency:
		le := formatFloat(time.Duration(s.Threshold).Seconds())
		return fmt.Sprintf("1 - (\n  sum(rate(%s%s[%s]))\n  /\n  sum(rate(%s%s[%s]))\n)",
			metric("http_request_duration_seconds_bucket"), selector(s, fmt.Sprintf("le=%q", le)), w,
			metric("http_request_duration_seconds_count"), selector(s), w)
	default:
		return fmt.Sprintf("(\n  sum(rate(%s%s[%s]))\n  or vector(0)\n)\n/\n%s",
			metric("http_requests_total"), selector(s, `code=~"5.."`), w, requestRate(s, w))
	}
}

// burnAlerts are the multi-window, multi-burn-rate alerts: one rule per
// severity covers every SLO, reading each one's threshold from its
// recorded objective.
func burnAlerts(f *SLOFile) []Rule {
	alert := func(name, severity string, windows []BurnWindow, summary string) Rule {
		var conds []string
		var signals []string
		for _, w := range windows {
			threshold := fmt.Sprintf("on(slo, sli) (%s * (1 - %s))", formatFloat(w.Burn), recObjective)
			conds = append(conds, fmt.Sprintf("(\n  %s%s > %s\n  and on(slo, sli)\n  %s%s > %s\n  and on(slo, sli)\n  %s%s * %d >= %d\n)",
				recErrorRatio, w.Long, threshold,
				recErrorRatio, w.Short, threshold,
				recRequests, w.Long, int(time.Duration(w.Long).Seconds()), w.MinRequests))
			signals = append(signals, recErrorRatio+w.Long.String(), recErrorRatio+w.Short.String(), recRequests+w.Long.String())
		}
		return Rule{
			Alert:  name,
			Expr:   strings.Join(conds, "\nor\n"),
			Labels: map[string]string{"severity": severity},
			Annotations: map[string]string{
				"summary":     "{{ $labels.slo }}: " + summary,
				"description": "The " + "{{ $labels.sli }}" + " SLO " + "{{ $labels.slo }}" + " is spending its error budget too fast: see its burn rates in the dashboard's SLO row.",
				"runbook":     runbook("error-budget-burn"),
			},
			signals: signals,
		}
	}
	rules := []Rule{alert(alertBurnPage, "page", f.Alerts.Page, "the error budget is burning fast enough to be gone within days")}
	if len(f.Alerts.Ticket) > 0 {
		rules = append(rules, alert(alertBurnTicket, "ticket", f.Alerts.Ticket, "the error budget is being spent faster than the period allows"))
	}
	return rules
}

// formatFloat spells a number as PromQL and Prometheus' le labels do.
func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// RulesYAML returns the Prometheus rule file: observability/prometheus/
// rules.yml is this, and a test fails when it is stale.
func RulesYAML() ([]byte, error) {
	groups, err := RuleGroups()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# Generated by `make generate` from observability/slos.yaml and\n" +
		"# observability/alerts.go: edit those, not this file.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(map[string]any{"groups": groups}); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// RuleQueries returns what every rule reads: a recording rule's
// expression, an alert's signals.
func RuleQueries() ([]Query, error) {
	groups, err := RuleGroups()
	if err != nil {
		return nil, err
	}
	var qs []Query
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				qs = append(qs, Query{Where: fmt.Sprintf("record %s%v", r.Record, r.Labels), Expr: r.Expr})
				continue
			}
			for _, s := range r.signals {
				qs = append(qs, Query{Where: "alert " + r.Alert, Expr: s})
			}
		}
	}
	return qs, nil
}
