package observability

// Queries returns every query the dashboard and the rules run: each
// panel target, each recording rule's expression, and the signals each
// alert compares against its threshold.
func Queries() ([]Query, error) {
	d, err := DashboardQueries()
	if err != nil {
		return nil, err
	}
	r, err := RuleQueries()
	if err != nil {
		return nil, err
	}
	return append(r, d...), nil
}
