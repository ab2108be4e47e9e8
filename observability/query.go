package observability

// Query is one PromQL expression that a dashboard panel or a rule
// evaluates, with where it comes from, so that a check that finds it
// returning nothing can say which panel or rule to fix.
type Query struct {
	// Where names the query's home: `panel "Requests per second" (A)`,
	// `record slo:...`, `alert PaymentsBreakerOpen`.
	Where string
	// Expr is the PromQL as Grafana or Prometheus would run it. Panel
	// queries may use Grafana's $__rate_interval; whoever runs them
	// outside Grafana substitutes a window for it.
	Expr string
}
