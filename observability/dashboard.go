package observability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
	"github.com/prometheus/common/model"

	"github.com/resiliencekit/payservice/internal/app"
)

// The dashboard is declared below as data, rows of panels of queries,
// and rendered with grafana-foundation-sdk, whose types are generated
// from Grafana's own dashboard and panel schemas (Grafana 12,
// schemaVersion 42): a misspelt option does not compile, where in
// hand-written JSON it would be a panel silently showing its defaults.
// The layout (ids, grid positions) is ours, so that it is deterministic
// and tested.

// Every query reads the Prometheus the dashboard's one variable names:
// the JSON imports into any Grafana, whatever its data sources are
// called.
const datasourceVariable = "datasource"

// window is every rate's range: Grafana's $__rate_interval, at least
// four scrape intervals, so a rate never comes out empty at any zoom.
const window = "[$__rate_interval]"

// apiRoutes selects the public API's requests: not the probes, nor
// /openapi.yaml, nor requests that matched no route (route="unmatched").
const apiRoutes = `route=~"/v1/.+"`

// The Redis client's connection-pool metrics (redisclient's pool
// collector), in one place: their names follow go-redis's own collector.
const (
	redisPoolHits     = "redis_pool_hit_total"
	redisPoolMisses   = "redis_pool_miss_total"
	redisPoolTimeouts = "redis_pool_timeout_total"
	redisPoolConns    = "redis_pool_conn_total_current"
	redisPoolIdle     = "redis_pool_conn_idle_current"
)

// Panel geometry on Grafana's 24-column grid.
const (
	gridWidth   = 24
	panelHeight = 8
)

type panelKind int

const (
	timeSeries    panelKind = iota
	stateTimeline           // a gauge whose values name states
	singleStat              // one number, coloured by thresholds
)

// row is one row of the dashboard: a title, then its panels laid out
// left to right, wrapping at the grid's width.
type row struct {
	Title  string
	Panels []panel
}

// panel is one panel, as its reader needs it.
type panel struct {
	Title       string
	Description string
	Kind        panelKind
	Unit        string // a Grafana unit id: reqps, s, percentunit, ...
	// Width is in grid columns; zero shares the row's width evenly.
	Width   int
	Targets []target
	// States name the values of a state timeline's gauge.
	States []state
	// Thresholds colour a stat, and draw dashed lines on a time series;
	// ascending.
	Thresholds []threshold
}

// target is one query of a panel; Legend is Grafana's legend format.
type target struct{ Expr, Legend string }

// state is one value of a gauge, its name and colour.
type state struct {
	Value int
	Text  string
	Color string
}

// threshold is a value from which a panel turns Color.
type threshold struct {
	Value float64
	Color string
}

// breakerStates are the values of breaker_state, as the resilience
// package encodes them (a test reads them off a real breaker).
var breakerStates = []state{{0, "closed", "green"}, {1, "half-open", "yellow"}, {2, "open", "red"}}

// sumRate is the per-second rate of a counter, summed by the labels in
// by (none: one series).
func sumRate(by, series string) string {
	if by == "" {
		return fmt.Sprintf("sum(rate(%s%s))", series, window)
	}
	return fmt.Sprintf("sum by (%s) (rate(%s%s))", by, series, window)
}

// Dashboard returns the service's Grafana dashboard, as JSON: the
// requests (rate, errors, latency) of each API route, the SLOs' error
// budget burn, then one row per resilience pattern.
// observability/grafana/dashboards/service.json is this (a file name
// `make rename` leaves alone), and a test fails when it is stale.
func Dashboard() ([]byte, error) {
	d, err := build()
	if err != nil {
		return nil, err
	}
	return encode(d)
}

// encode spells d as the committed file does: indented, and "&" as
// itself rather than \u0026.
func encode(d dashboard.Dashboard) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("encode dashboard: %w", err)
	}
	return b.Bytes(), nil
}

// DashboardQueries returns the query of every panel target, each named
// by its row, panel and refId.
func DashboardQueries() ([]Query, error) {
	d, err := build()
	if err != nil {
		return nil, err
	}
	var qs []Query
	rowTitle := ""
	for _, p := range d.Panels {
		if p.RowPanel != nil {
			rowTitle = *p.RowPanel.Title
			continue
		}
		for _, t := range p.Panel.Targets {
			q, ok := t.(prometheus.Dataquery)
			if !ok {
				return nil, fmt.Errorf("panel %q: a %T target, not a Prometheus query", *p.Panel.Title, t)
			}
			qs = append(qs, Query{
				Where: fmt.Sprintf("row %q, panel %q (%s)", rowTitle, *p.Panel.Title, *q.RefId),
				Expr:  q.Expr,
			})
		}
	}
	return qs, nil
}

// rows declares the dashboard, top to bottom.
func rows() ([]row, error) {
	slos, err := sloRow()
	if err != nil {
		return nil, err
	}
	cfg := app.Default()
	return []row{
		redRow(),
		slos,
		{Title: "Circuit breakers", Panels: []panel{
			{
				Title:       "Breaker state",
				Description: "Open: calls fail at once (503) without reaching the dependency. Half-open: a few probes decide whether it closes.",
				Kind:        stateTimeline, States: breakerStates,
				Targets: []target{{fmt.Sprintf("max by (name) (%s)", metric("breaker_state")), "{{name}}"}},
			},
			{
				Title: "Breaker transitions", Unit: "short",
				Description: "State changes, by breaker and the state entered.",
				Targets: []target{{
					fmt.Sprintf("sum by (name, to) (increase(%s%s))", metric("breaker_transitions_total"), window),
					"{{name}} → {{to}}",
				}},
			},
		}},
		{Title: "Retries", Panels: []panel{
			{
				Title: "Attempts by outcome", Unit: "ops",
				Description: "success; retried (failed, tried again); final_* (failed, given up, with the reason); not_started (given up before a first attempt for lack of time).",
				Targets:     []target{{sumRate("name, outcome", metric("retry_attempts_total")), "{{name}} {{outcome}}"}},
			},
			{
				Title: "Attempts per call", Unit: "short",
				Description: "The load retries add: attempts made per call that reached the dependency. The retry budget keeps it near 1 + its ratio under load, however the dependency fails.",
				Targets: []target{{
					fmt.Sprintf("%s\n/\n%s",
						sumRate("name", metric("retry_attempts_total")+`{outcome!="not_started"}`),
						sumRate("name", metric("retry_attempts_total")+`{outcome!~"retried|not_started"}`)),
					"{{name}}",
				}},
			},
			{
				Title: "Retries refused by the budget", Unit: "ops",
				Description: "Retries not made because the dependency's retry budget was empty: failures reach the caller on their first attempt.",
				Targets:     []target{{sumRate("name", metric("retry_budget_exhausted_total")), "{{name}}"}},
			},
		}},
		{Title: "Bulkheads", Panels: []panel{
			{
				Title: "Calls in flight and queued", Unit: "short",
				Description: "Per replica: its bulkhead's concurrency and queue limits apply to each.",
				Targets: []target{
					{fmt.Sprintf("sum by (name, instance) (%s)", metric("bulkhead_in_flight")), "{{name}} in flight, {{instance}}"},
					{fmt.Sprintf("sum by (name, instance) (%s)", metric("bulkhead_queue_depth")), "{{name}} queued, {{instance}}"},
				},
			},
			{
				Title: "Calls refused, by reason", Unit: "ops",
				Description: "full: concurrency and queue both full, answered 503 at once. closed: shutting down.",
				Targets:     []target{{sumRate("name, reason", metric("bulkhead_rejections_total")), "{{name}} {{reason}}"}},
			},
		}},
		{Title: "Rate limits", Panels: []panel{
			{
				Title: "Requests refused (429), by limiter", Unit: "reqps",
				Description: "clients: per authenticated client; anonymous: per remote address failing authentication.",
				Targets:     []target{{sumRate("name", metric("ratelimit_rejections_total")), "{{name}}"}},
			},
			{
				Title: "Clients refused most (429)", Unit: "reqps",
				Description: "The ten clients or addresses with the most requests refused.",
				Targets: []target{{
					fmt.Sprintf("topk(10, %s)", sumRate("client, limiter", metric("http_ratelimited_total"))),
					"{{client}} ({{limiter}})",
				}},
			},
			{
				Title: "Buckets kept", Unit: "short",
				Description: "Clients and addresses tracked, on the replica tracking most; RATE_LIMIT_MAX_KEYS bounds each limiter.",
				Targets:     []target{{fmt.Sprintf("max by (name) (%s)", metric("ratelimit_keys")), "{{name}}"}},
			},
			{
				Title: "Provider calls refused by its quota", Unit: "ops",
				Description: "Calls not made because the egress limiter had no room before their deadline.",
				Targets:     []target{{sumRate("name", metric("egress_rate_limited_total")), "{{name}}"}},
			},
		}},
		{Title: "Idempotency", Panels: []panel{
			{
				Title: "Requests by outcome", Unit: "reqps",
				Description: "new: first time the key is seen; replay: the stored answer sent again; in_flight: the key's first request still running (409); mismatch: the key reused for another request (422).",
				Targets:     []target{{sumRate("outcome", metric("idempotency_total")), "{{outcome}}"}},
			},
			{
				Title: "Fast-path (Redis) errors", Unit: "ops",
				Description: "Redis operations of the idempotency fast path that failed: those requests were served through Postgres alone.",
				Targets:     []target{{sumRate("", metric("idempotency_store_errors_total")), "errors"}},
			},
		}},
		{Title: "Reconciler", Panels: []panel{
			{
				Title: "Payments examined, by result", Unit: "ops", Width: 8,
				Targets: []target{{sumRate("result", metric("reconciler_payments_total")), "{{result}}"}},
			},
			{
				Title: "Refunds examined, by result", Unit: "ops", Width: 8,
				Targets: []target{{sumRate("result", metric("reconciler_refunds_total")), "{{result}}"}},
			},
			{
				Title: "Active reconcilers", Kind: singleStat, Width: 8,
				Description: "Replicas leading the reconciler: exactly one, or payments left processing are not settled.",
				Targets:     []target{{fmt.Sprintf("sum(%s)", metric("reconciler_leader")), "leaders"}},
				Thresholds:  []threshold{{0, "red"}, {1, "green"}, {2, "red"}},
			},
			{
				Title: "Left processing", Unit: "short", Width: 12,
				Description: "Payments and refunds still processing after the leader's last scan.",
				Targets:     []target{{fmt.Sprintf("max by (kind) (%s)", metric("reconciler_backlog")), "{{kind}}"}},
			},
			{
				Title: "Oldest left processing", Unit: "s", Width: 12,
				Description: fmt.Sprintf("Age of the oldest one's last attempt. Past RECONCILE_GRACE (%v, the line) its outcome should have been settled.", cfg.Reconciler.Grace),
				Targets:     []target{{fmt.Sprintf("max by (kind) (%s)", metric("reconciler_oldest_seconds")), "{{kind}}"}},
				Thresholds:  []threshold{{0, "green"}, {cfg.Reconciler.Grace.Seconds(), "red"}},
			},
		}},
		{Title: "Postgres", Panels: []panel{
			{
				Title: "Pool in use, busiest replica", Unit: "percentunit", Width: 6,
				Description: "Connections in use over DB_MAX_OPEN_CONNS. Near 100%, queries wait for a connection.",
				Targets: []target{{
					"max by (db_name) (go_sql_in_use_connections / (go_sql_max_open_connections > 0))",
					"{{db_name}}",
				}},
				Thresholds: []threshold{{0, "green"}, {0.9, "red"}},
			},
			{
				Title: "Connections", Unit: "short", Width: 6,
				Targets: []target{
					{"sum by (db_name) (go_sql_in_use_connections)", "{{db_name}} in use"},
					{"sum by (db_name) (go_sql_idle_connections)", "{{db_name}} idle"},
				},
			},
			{
				Title: "Waits for a connection", Unit: "ops", Width: 6,
				Targets: []target{{sumRate("db_name", "go_sql_wait_count_total"), "{{db_name}}"}},
			},
			{
				Title: "Time waiting for a connection", Unit: "s", Width: 6,
				Description: "Seconds spent waiting per second: the average number of queries waiting.",
				Targets:     []target{{sumRate("db_name", "go_sql_wait_duration_seconds_total"), "{{db_name}}"}},
			},
			{
				Title: "Reads that may be stale, by pool", Unit: "ops", Width: 8,
				Description: "replica while it is within DATABASE_REPLICA_MAX_LAG; primary otherwise, or without a replica.",
				Targets:     []target{{sumRate("pool", metric("postgres_reads_total")), "{{pool}}"}},
			},
			{
				Title: "Replica lag", Unit: "s", Width: 8,
				Description: fmt.Sprintf("How stale the replica may be, measured against the primary. Past DATABASE_REPLICA_MAX_LAG (%v, the line) reads go to the primary.", cfg.Postgres.ReplicaMaxLag),
				Targets:     []target{{fmt.Sprintf("max(%s)", metric("postgres_replica_lag_seconds")), "lag"}},
				Thresholds:  []threshold{{0, "green"}, {cfg.Postgres.ReplicaMaxLag.Seconds(), "red"}},
			},
			{
				Title: "Replicas writing to each server", Unit: "short", Width: 8,
				Description: "Which Postgres server takes the writes, as each replica last saw it: after a failover, the lines swap.",
				Targets:     []target{{fmt.Sprintf("count by (server) (%s == 1)", metric("postgres_writer_info")), "{{server}}"}},
			},
		}},
		{Title: "Redis", Panels: []panel{
			{
				Title: "Redis breaker", Kind: stateTimeline, States: breakerStates,
				Description: "Open: the idempotency fast path is skipped and requests go to Postgres alone (its errors are in the Idempotency row).",
				Targets:     []target{{fmt.Sprintf(`max(%s{name="redis"})`, metric("breaker_state")), "redis"}},
			},
			{
				Title: "Pool connections", Unit: "short",
				Targets: []target{
					{fmt.Sprintf("sum(%s)", metric(redisPoolConns)), "open"},
					{fmt.Sprintf("sum(%s)", metric(redisPoolIdle)), "idle"},
				},
			},
			{
				Title: "Pool hits, misses and timeouts", Unit: "ops",
				Description: "A miss opens a connection; a timeout waited for one in vain.",
				Targets: []target{
					{sumRate("", metric(redisPoolHits)), "hits"},
					{sumRate("", metric(redisPoolMisses)), "misses"},
					{sumRate("", metric(redisPoolTimeouts)), "timeouts"},
				},
			},
		}},
		{Title: "Health", Panels: []panel{
			{
				Title: "Ready, by instance", Kind: stateTimeline,
				States:  []state{{0, "not ready", "red"}, {1, "ready", "green"}},
				Targets: []target{{fmt.Sprintf("max by (instance) (%s)", metric("health_ready")), "{{instance}}"}},
			},
			{
				Title: "Checks, worst instance", Kind: stateTimeline,
				States:  []state{{0, "failing", "red"}, {1, "ok", "green"}},
				Targets: []target{{fmt.Sprintf("min by (check) (%s)", metric("health_check_up")), "{{check}}"}},
			},
			{
				Title: "Readiness changes", Unit: "short",
				Description: "An instance that keeps changing leaves and rejoins the load balancer.",
				Targets: []target{{
					fmt.Sprintf("sum by (instance) (increase(%s%s))", metric("health_ready_changes_total"), window),
					"{{instance}}",
				}},
			},
		}},
	}, nil
}

// redRow is rate, errors and duration of each API route.
func redRow() row {
	requests := metric("http_requests_total")
	buckets := metric("http_request_duration_seconds_bucket")
	quantile := func(q float64) target {
		return target{
			fmt.Sprintf("histogram_quantile(%s, %s)", formatFloat(q), sumRate("route, method, le", buckets+"{"+apiRoutes+"}")),
			"{{method}} {{route}}",
		}
	}
	all := requests + "{" + apiRoutes + "}"
	return row{Title: "Requests", Panels: []panel{
		{
			Title: "Requests per second, by route", Unit: "reqps", Width: 8,
			Targets: []target{{sumRate("route, method", all), "{{method}} {{route}}"}},
		},
		{
			Title: "Responses per second, by status", Unit: "reqps", Width: 8,
			Targets: []target{{sumRate("code", all), "{{code}}"}},
		},
		{
			// "or 0 * all" gives every route a zero while none failed,
			// where the ratio alone would have no series at all.
			Title: "Server errors (5xx), share of requests", Unit: "percentunit", Width: 8,
			Targets: []target{{
				fmt.Sprintf("(\n  %s\n  or\n  0 * %s\n)\n/\n%s",
					sumRate("route, method", requests+"{"+apiRoutes+`, code=~"5.."}`),
					sumRate("route, method", all),
					sumRate("route, method", all)),
				"{{method}} {{route}}",
			}},
		},
		{Title: "Latency p50, by route", Unit: "s", Width: 12, Targets: []target{quantile(0.5)}},
		{Title: "Latency p99, by route", Unit: "s", Width: 12, Targets: []target{quantile(0.99)}},
	}}
}

// sloRow shows each SLO's error budget burn over the windows its alerts
// watch (observability/slos.yaml), each with its alert's threshold.
func sloRow() (row, error) {
	f, err := LoadSLOs()
	if err != nil {
		return row{}, err
	}
	burn := func(w model.Duration) string {
		return fmt.Sprintf("%s%s / on(slo, sli) (1 - %s)", recErrorRatio, w, recObjective)
	}
	r := row{Title: "SLOs: error budget burn"}
	for _, w := range f.Alerts.Page {
		r.Panels = append(r.Panels, panel{
			Title: fmt.Sprintf("Burn rate over %s", w.Long), Unit: "short",
			Description: fmt.Sprintf("How many times faster than the %s period allows each SLO spends its error budget. "+
				"Pages above %s× (the line) here and over %s.", f.Period, formatFloat(w.Burn), w.Short),
			Targets:    []target{{burn(w.Long), "{{slo}}"}},
			Thresholds: []threshold{{0, "green"}, {w.Burn, "red"}},
		})
	}
	for _, w := range f.Alerts.Ticket {
		// The rules record no window longer than the ticket's: the
		// budget left over the whole period is not known, and this is
		// what the last window spent, as a share of the period's
		// budget, taking traffic as steady.
		share := time.Duration(w.Long).Seconds() / time.Duration(f.Period).Seconds()
		r.Panels = append(r.Panels, panel{
			Title: fmt.Sprintf("Error budget spent over the last %s", w.Long), Kind: singleStat, Unit: "percentunit",
			Description: fmt.Sprintf("The share of the %s error budget the last %s spent, taking traffic as steady. "+
				"Not the budget left: no window as long as the period is recorded. A ticket opens above %s%% (%s× the allowed pace).",
				f.Period, w.Long, formatFloat(100*w.Burn*share), formatFloat(w.Burn)),
			Targets:    []target{{fmt.Sprintf("%s * %s", burn(w.Long), formatFloat(share)), "{{slo}}"}},
			Thresholds: []threshold{{0, "green"}, {w.Burn * share, "red"}},
		})
	}
	return r, nil
}

// build renders the rows with the SDK, numbering the panels and laying
// them out.
func build() (dashboard.Dashboard, error) {
	rs, err := rows()
	if err != nil {
		return dashboard.Dashboard{}, err
	}
	d, err := dashboard.NewDashboardBuilder(app.Name).
		Uid(app.Name).
		Tags([]string{app.Name}).
		Refresh("30s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder(datasourceVariable).Label("Data source").Type("prometheus")).
		// Grafana's own annotations (alerts, notes added by hand), as
		// every dashboard it saves has them.
		Annotation(dashboard.NewAnnotationQueryBuilder().
			Name("Annotations & Alerts").BuiltIn(1).Type("dashboard").
			Datasource(common.DataSourceRef{Type: ptr("grafana"), Uid: ptr("-- Grafana --")}).
			Enable(true).Hide(true).IconColor("rgba(0, 211, 255, 1)")).
		Build()
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("dashboard: %w", err)
	}
	var id uint32
	y := 0
	for _, r := range rs {
		id++
		rp := dashboard.NewRowPanel()
		rp.Id, rp.Title = id, &r.Title
		rp.GridPos = &dashboard.GridPos{X: 0, Y: uint32(y), W: gridWidth, H: 1}
		d.Panels = append(d.Panels, dashboard.PanelOrRowPanel{RowPanel: rp})
		y++
		x := 0
		for _, p := range r.Panels {
			w := p.Width
			if w == 0 {
				w = gridWidth / len(r.Panels)
			}
			if x+w > gridWidth {
				x, y = 0, y+panelHeight
			}
			id++
			built, err := p.build(id, dashboard.GridPos{X: uint32(x), Y: uint32(y), W: uint32(w), H: panelHeight})
			if err != nil {
				return dashboard.Dashboard{}, fmt.Errorf("row %q, panel %q: %w", r.Title, p.Title, err)
			}
			d.Panels = append(d.Panels, dashboard.PanelOrRowPanel{Panel: &built})
			x += w
		}
		y += panelHeight
	}
	return d, nil
}

// build renders one panel, with the given id and position.
func (p panel) build(id uint32, pos dashboard.GridPos) (dashboard.Panel, error) {
	legend := common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom).ShowLegend(true)
	tooltip := common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending)
	var b cog.Builder[dashboard.Panel]
	switch p.Kind {
	case timeSeries:
		ts := timeseries.NewPanelBuilder().Legend(legend).Tooltip(tooltip)
		if len(p.Thresholds) > 0 {
			ts.ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeDashed))
		}
		b = ts
	case stateTimeline:
		b = statetimeline.NewPanelBuilder().Legend(legend).Tooltip(tooltip)
	case singleStat:
		b = stat.NewPanelBuilder().
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
			ColorMode(common.BigValueColorModeValue).GraphMode(common.BigValueGraphModeArea).
			Orientation(common.VizOrientationAuto)
	default:
		return dashboard.Panel{}, fmt.Errorf("unknown panel kind %d", p.Kind)
	}
	out, err := b.Build()
	if err != nil {
		return dashboard.Panel{}, err
	}
	ds := common.DataSourceRef{Type: ptr("prometheus"), Uid: ptr("${" + datasourceVariable + "}")}
	out.Id, out.Title, out.GridPos, out.Datasource = &id, &p.Title, &pos, &ds
	if p.Description != "" {
		out.Description = &p.Description
	}
	if out.FieldConfig == nil { // a stat sets none of its own
		out.FieldConfig = dashboard.NewFieldConfigSource()
	}
	fc := &out.FieldConfig.Defaults
	if p.Unit != "" {
		fc.Unit = &p.Unit
	}
	for _, s := range p.States {
		text, color := s.Text, s.Color
		fc.Mappings = append(fc.Mappings, dashboard.ValueMapping{ValueMap: &dashboard.ValueMap{
			Type:    dashboard.MappingTypeValueToText,
			Options: map[string]dashboard.ValueMappingResult{strconv.Itoa(s.Value): {Text: &text, Color: &color}},
		}})
	}
	if len(p.Thresholds) > 0 {
		steps := make([]dashboard.Threshold, len(p.Thresholds))
		for i, t := range p.Thresholds {
			steps[i] = dashboard.Threshold{Value: &t.Value, Color: t.Color}
		}
		steps[0].Value = nil // Grafana's first step starts at -Infinity
		fc.Thresholds = &dashboard.ThresholdsConfig{Mode: dashboard.ThresholdsModeAbsolute, Steps: steps}
	}
	for i, t := range p.Targets {
		q, err := prometheus.NewDataqueryBuilder().
			RefId(string(rune('A' + i))).
			Expr(t.Expr).
			LegendFormat(t.Legend).
			Datasource(ds).
			Build()
		if err != nil {
			return dashboard.Panel{}, err
		}
		out.Targets = append(out.Targets, q)
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }
