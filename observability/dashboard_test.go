package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
	promclient "github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// knownMetrics are the series the dashboard may read, each checked
// against the code that exports it, so that a misspelt name fails here
// rather than as an empty panel. The recording rules' series (slo:...)
// are checked against RuleGroups instead.
var knownMetrics = []string{
	// internal/platform/web
	"payservice_http_requests_total",
	"payservice_http_request_duration_seconds_bucket",
	// internal/platform/resilience
	"payservice_breaker_state",
	"payservice_breaker_transitions_total",
	"payservice_retry_attempts_total",
	"payservice_retry_budget_exhausted_total",
	"payservice_bulkhead_in_flight",
	"payservice_bulkhead_queue_depth",
	"payservice_bulkhead_rejections_total",
	"payservice_ratelimit_rejections_total",
	"payservice_ratelimit_keys",
	"payservice_egress_rate_limited_total",
	"payservice_http_ratelimited_total",
	// internal/platform/idempotency
	"payservice_idempotency_total",
	"payservice_idempotency_store_errors_total",
	// internal/payments (the reconciler)
	"payservice_reconciler_payments_total",
	"payservice_reconciler_refunds_total",
	"payservice_reconciler_leader",
	"payservice_reconciler_backlog",
	"payservice_reconciler_oldest_seconds",
	// internal/platform/postgres, and client_golang's DBStatsCollector
	// (db_name="primary" or "replica")
	"payservice_postgres_replica_lag_seconds",
	"payservice_postgres_reads_total",
	"payservice_postgres_writer_info",
	"go_sql_in_use_connections",
	"go_sql_idle_connections",
	"go_sql_max_open_connections",
	"go_sql_wait_count_total",
	"go_sql_wait_duration_seconds_total",
	// internal/platform/redisclient
	"payservice_redis_pool_hit_total",
	"payservice_redis_pool_miss_total",
	"payservice_redis_pool_timeout_total",
	"payservice_redis_pool_conn_total_current",
	"payservice_redis_pool_conn_idle_current",
	// internal/platform/health
	"payservice_health_ready",
	"payservice_health_ready_changes_total",
	"payservice_health_check_up",
}

// The dashboard as Grafana reads it: only what the tests look at.
type grafanaDashboard struct {
	UID, Title, Refresh string
	Time                struct{ From, To string }
	Templating          struct {
		List []struct{ Name, Type, Query string }
	}
	Panels []grafanaPanel
}

type grafanaPanel struct {
	ID         int
	Type       string
	Title      string
	GridPos    struct{ X, Y, W, H int }
	Datasource *grafanaDatasource
	Targets    []struct {
		RefID        string
		Expr         string
		LegendFormat string
		Datasource   *grafanaDatasource
	}
	FieldConfig struct {
		Defaults struct {
			Mappings []struct {
				Type    string
				Options map[string]struct{ Text, Color string }
			}
			Thresholds struct {
				Steps []struct {
					Value *float64
					Color string
				}
			}
		}
	}
}

type grafanaDatasource struct{ Type, UID string }

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	b, err := Dashboard()
	if err != nil {
		t.Fatalf("Dashboard: %v", err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	return d
}

// panelsByRow groups the panels under the row that precedes them.
func panelsByRow(d grafanaDashboard) (rows []string, panels map[string][]grafanaPanel) {
	panels = map[string][]grafanaPanel{}
	row := ""
	for _, p := range d.Panels {
		if p.Type == "row" {
			row = p.Title
			rows = append(rows, row)
			continue
		}
		panels[row] = append(panels[row], p)
	}
	return rows, panels
}

func TestDashboard_IsTheSameIndentedJSONOnEveryCall(t *testing.T) {
	first, err := Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := Dashboard()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatal("two calls gave different dashboards: the generated file would never be up to date")
		}
	}
	if !json.Valid(first) {
		t.Fatal("not valid JSON")
	}
	if !bytes.HasPrefix(first, []byte("{\n  \"")) || !bytes.HasSuffix(first, []byte("\n}\n")) {
		t.Errorf("want indented JSON ending in a newline, got %q ... %q", first[:min(len(first), 10)], first[max(0, len(first)-10):])
	}
}

// Grafana's schema, as the SDK's strict decoder holds it, accepts the
// dashboard, and it comes out byte for byte the same: no field Grafana
// does not know, none lost.
func TestDashboard_RoundTripsThroughGrafanasSchema(t *testing.T) {
	rt := cog.NewRuntime()
	rt.RegisterPanelcfgVariant(timeseries.VariantConfig())
	rt.RegisterPanelcfgVariant(statetimeline.VariantConfig())
	rt.RegisterPanelcfgVariant(stat.VariantConfig())
	rt.RegisterDataqueryVariant(prometheus.VariantConfig())

	b, err := Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard.Dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("Grafana's schema refuses the dashboard: %v", err)
	}
	if err := sdkError(d.Validate()); err != nil {
		t.Fatalf("Grafana's schema refuses the dashboard: %v", err)
	}
	again, err := encode(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Errorf("decoded and encoded again, the dashboard changed:\n%s", firstDifference(b, again))
	}
}

// sdkError is err, or nil for the SDK's way to say "no error": a nil
// list of errors, typed, which makes a non-nil error.
func sdkError(err error) error {
	// Asserted, not errors.As: the typed nil is the error itself, never
	// wrapped, and errors.As would also match a non-empty list within.
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 { //nolint:errorlint // see above
		return nil
	}
	return err
}

func firstDifference(a, b []byte) string {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d: %q became %q", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("%d lines became %d", len(la), len(lb))
}

// It imports into any Grafana: every query reads the Prometheus data
// source the one variable names, never a data source of ours.
func TestDashboard_ReadsThePrometheusItsVariableNames(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "payservice" || d.Title != "payservice" {
		t.Errorf("uid %q, title %q: want payservice", d.UID, d.Title)
	}
	if d.Refresh != "30s" || d.Time.From != "now-1h" || d.Time.To != "now" {
		t.Errorf("refresh %q, time %s to %s: want 30s, now-1h to now", d.Refresh, d.Time.From, d.Time.To)
	}
	want := []struct{ Name, Type, Query string }{{"datasource", "datasource", "prometheus"}}
	if !slices.Equal(d.Templating.List, want) {
		t.Errorf("variables %+v, want only %+v", d.Templating.List, want)
	}
	ours := grafanaDatasource{Type: "prometheus", UID: "${datasource}"}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != ours {
			t.Errorf("panel %q reads data source %+v, want %+v", p.Title, p.Datasource, ours)
		}
		for _, q := range p.Targets {
			if q.Datasource == nil || *q.Datasource != ours {
				t.Errorf("panel %q (%s) reads data source %+v, want %+v", p.Title, q.RefID, q.Datasource, ours)
			}
		}
	}
}

func TestDashboard_PanelIDsAreUnique(t *testing.T) {
	seen := map[int]string{}
	for _, p := range loadDashboard(t).Panels {
		if other, dup := seen[p.ID]; dup {
			t.Errorf("id %d: both %q and %q", p.ID, other, p.Title)
		}
		seen[p.ID] = p.Title
	}
}

func TestDashboard_PanelsFitTheGridWithoutOverlapping(t *testing.T) {
	ps := loadDashboard(t).Panels
	for i, p := range ps {
		g := p.GridPos
		if g.X < 0 || g.Y < 0 || g.W < 1 || g.H < 1 || g.X+g.W > 24 {
			t.Errorf("panel %q at %+v: outside the 24-column grid", p.Title, g)
		}
		for _, o := range ps[:i] {
			h := o.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panel %q at %+v overlaps %q at %+v", p.Title, g, o.Title, h)
			}
		}
	}
}

// The rows the issue asks for: RED, the SLOs, and one per pattern.
func TestDashboard_HasARowForEachConcern(t *testing.T) {
	rows, panels := panelsByRow(loadDashboard(t))
	for _, want := range []string{
		"Requests", "SLOs: error budget burn", "Circuit breakers", "Retries", "Bulkheads",
		"Rate limits", "Idempotency", "Reconciler", "Postgres", "Redis", "Health",
	} {
		if !slices.Contains(rows, want) {
			t.Errorf("no row %q; rows: %q", want, rows)
		} else if len(panels[want]) == 0 {
			t.Errorf("row %q has no panel", want)
		}
	}
	if len(panels[""]) > 0 {
		t.Errorf("%d panels before the first row", len(panels[""]))
	}
}

// The breaker panels name each value of breaker_state as a real breaker
// reports it: closed, then open once tripped, then half-open once its
// open timeout has passed.
func TestDashboard_BreakerStatesNameTheBreakersGaugeValues(t *testing.T) {
	var got map[string]float64 // state → gauge value
	synctest.Test(t, func(t *testing.T) {
		reg := promclient.NewRegistry()
		b, err := resilience.NewBreaker(resilience.BreakerSettings{
			Name: "dep", Window: time.Second, MinRequests: 1, FailureRatio: 1, OpenTimeout: time.Second, HalfOpenProbes: 1,
		}, func(error) resilience.Outcome { return resilience.Failure }, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]float64{}
		read := func() {
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() == "breaker_state" {
					got[b.State()] = mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
		}
		read()
		_ = b.Execute(context.Background(), func(context.Context) error { return errors.New("down") })
		read()
		time.Sleep(time.Second + time.Nanosecond) // past the open timeout
		read()
	})
	if len(got) != 3 {
		t.Fatalf("the breaker went through %v, want closed, open and half-open", got)
	}
	_, panels := panelsByRow(loadDashboard(t))
	for _, row := range []string{"Circuit breakers", "Redis"} {
		i := slices.IndexFunc(panels[row], func(p grafanaPanel) bool { return p.Type == "state-timeline" })
		if i < 0 {
			t.Fatalf("row %q: no state timeline", row)
		}
		names := map[string]string{} // gauge value → name shown
		for _, m := range panels[row][i].FieldConfig.Defaults.Mappings {
			for v, r := range m.Options {
				names[v] = r.Text
			}
		}
		for state, v := range got {
			if shown := names[strconv.FormatFloat(v, 'g', -1, 64)]; shown != state {
				t.Errorf("row %q: the breaker reports %s as %v, which the panel shows as %q", row, state, v, shown)
			}
		}
	}
}

var rangeSelector = regexp.MustCompile(`\[[^\]]*\]`)

func TestDashboard_EveryPanelHasQueriesWhoseRatesUseRateInterval(t *testing.T) {
	for _, p := range loadDashboard(t).Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refIDs := map[string]bool{}
		for _, q := range p.Targets {
			if q.RefID == "" || refIDs[q.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, q.RefID)
			}
			refIDs[q.RefID] = true
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q (%s): no expression", p.Title, q.RefID)
			}
			for _, r := range rangeSelector.FindAllString(q.Expr, -1) {
				if r != "[$__rate_interval]" {
					t.Errorf("panel %q (%s): range %s, want [$__rate_interval], which follows the zoom and the scrape interval:\n%s", p.Title, q.RefID, r, q.Expr)
				}
			}
		}
	}
}

// Every series a query reads is one the service exports or a rule
// records, and every name on the list is read somewhere, so that the
// list stays the dashboard's.
func TestDashboard_QueriesReadOnlyKnownSeries(t *testing.T) {
	groups, err := RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]bool{}
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	used := map[string]bool{}
	for _, p := range loadDashboard(t).Panels {
		for _, q := range p.Targets {
			for _, name := range metricNames(q.Expr) {
				used[name] = true
				if !slices.Contains(knownMetrics, name) && !recorded[name] {
					t.Errorf("panel %q (%s) reads %s, which nothing exports or records:\n%s", p.Title, q.RefID, name, q.Expr)
				}
			}
		}
	}
	for _, name := range knownMetrics {
		if !used[name] {
			t.Errorf("%s is on the list of known series but no panel reads it", name)
		}
	}
}

// metricNames returns the series names a PromQL expression selects.
func metricNames(expr string) []string {
	// Blank out what holds no series name: strings, label matchers,
	// ranges, and the label lists of by, on and their kin.
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`"(?:[^"\\]|\\.)*"`),
		regexp.MustCompile(`\{[^}]*\}`),
		rangeSelector,
		regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`),
	} {
		expr = re.ReplaceAllString(expr, " ")
	}
	var names []string
	for _, at := range identifier.FindAllStringIndex(expr, -1) {
		name, before, after := expr[at[0]:at[1]], expr[:at[0]], strings.TrimLeft(expr[at[1]:], " \t\n")
		switch {
		case strings.HasSuffix(before, ".") || strings.TrimRight(before, "0123456789") != before:
			// the exponent or unit of a number: 1e3, 5m
		case strings.HasPrefix(after, "("): // a function or an aggregation
		case slices.Contains([]string{"and", "or", "unless", "bool", "offset", "inf", "nan"}, strings.ToLower(name)):
		default:
			names = append(names, name)
		}
	}
	return names
}

var identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`sum by (route, le) (rate(http_total{route=~"/v1/.+", code="5xx"}[$__rate_interval]))`, []string{"http_total"}},
		{`a:ratio:rate1h / on(slo, sli) group_left() (1 - b_objective) * 0.1`, []string{"a:ratio:rate1h", "b_objective"}},
		{`(x or 0 * y) / z`, []string{"x", "y", "z"}},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))`, []string{"h_bucket"}},
		{`topk(10, max(g == 1)) and bool up offset 5m`, []string{"g", "up"}},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// The burn-rate panels draw the page alerts' thresholds from slos.yaml.
func TestDashboard_BurnRatePanelsDrawThePageThresholds(t *testing.T) {
	f, err := LoadSLOs()
	if err != nil {
		t.Fatal(err)
	}
	_, panels := panelsByRow(loadDashboard(t))
	for _, w := range f.Alerts.Page {
		title := fmt.Sprintf("Burn rate over %s", w.Long)
		i := slices.IndexFunc(panels["SLOs: error budget burn"], func(p grafanaPanel) bool { return p.Title == title })
		if i < 0 {
			t.Errorf("no panel %q", title)
			continue
		}
		p := panels["SLOs: error budget burn"][i]
		var lines []float64
		for _, s := range p.FieldConfig.Defaults.Thresholds.Steps {
			if s.Value != nil { // the first step, from -Infinity, draws none
				lines = append(lines, *s.Value)
			}
		}
		if !slices.Equal(lines, []float64{w.Burn}) {
			t.Errorf("panel %q: lines at %v, want one at %v", title, lines, w.Burn)
		}
		if want := recErrorRatio + w.Long.String(); !strings.Contains(p.Targets[0].Expr, want) {
			t.Errorf("panel %q reads %s, want %s", title, p.Targets[0].Expr, want)
		}
	}
}

func TestDashboardQueries_NameEachTargetByRowPanelAndRefID(t *testing.T) {
	var want []Query
	row := ""
	for _, p := range loadDashboard(t).Panels {
		if p.Type == "row" {
			row = p.Title
		}
		for _, q := range p.Targets {
			want = append(want, Query{Where: fmt.Sprintf("row %q, panel %q (%s)", row, p.Title, q.RefID), Expr: q.Expr})
		}
	}
	got, err := DashboardQueries()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("DashboardQueries gave %d queries, the dashboard has %d targets:\ngot  %+v\nwant %+v", len(got), len(want), got, want)
	}
}
