package observability

import "fmt"

// File is one generated file: its path from the repository's root, and
// what it must hold.
type File struct {
	Path    string
	Content []byte
}

// Generated returns every file generated from this package, as `make
// generate` writes them.
func Generated() ([]File, error) {
	gens := []struct {
		path string
		gen  func() ([]byte, error)
	}{
		{"observability/prometheus/rules.yml", RulesYAML},
		{"observability/prometheus/tests/slo_test.yml", SLOTestsYAML},
		{"observability/prometheus/tests/slo_ticket_test.yml", SLOTicketTestsYAML},
		{"observability/grafana/dashboards/service.json", Dashboard},
	}
	files := make([]File, 0, len(gens))
	for _, g := range gens {
		b, err := g.gen()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", g.path, err)
		}
		files = append(files, File{Path: g.path, Content: b})
	}
	return files, nil
}
