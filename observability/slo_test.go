package observability

import (
	"strings"
	"testing"
)

func TestLoadSLOs_TheRepositorysFileIsValid(t *testing.T) {
	f, err := LoadSLOs()
	if err != nil {
		t.Fatal(err)
	}
	if len(f.SLOs) == 0 || len(f.Alerts.Page) == 0 {
		t.Fatalf("got %d SLOs, %d page windows", len(f.SLOs), len(f.Alerts.Page))
	}
}

const validSLOs = `
period: 30d
slos:
  - {name: create-availability, route: /v1/things, method: POST, sli: availability, objective: 99.9}
  - {name: create-latency, route: /v1/things, method: POST, sli: latency, threshold: 500ms, objective: 99}
alerts:
  page: [{long: 1h, short: 5m, burn: 14.4, min_requests: 100}]
`

func TestParseSLOs(t *testing.T) {
	f, err := ParseSLOs([]byte(validSLOs))
	if err != nil {
		t.Fatalf("the valid file: %v", err)
	}
	if got := f.SLOs[0].Ratio(); got != 0.999 {
		t.Errorf("Ratio of 99.9 = %v, want exactly 0.999", got)
	}
	// Each edit breaks the valid file once; the error must name where.
	for _, tt := range []struct{ old, new, want string }{
		{"objective: 99.9", "objectve: 99.9", "field objectve not found"},
		{"objective: 99.9", "objective: 100", "slos[0] (create-availability): objective"},
		{"objective: 99}", "objective: 0}", "slos[1] (create-latency): objective"},
		{"threshold: 500ms", "threshold: 300ms", "slos[1] (create-latency): threshold: 300ms is not a bound"},
		{"sli: availability", "sli: errors", `slos[0] (create-availability): sli: want "availability" or "latency"`},
		{"sli: availability", "sli: availability, threshold: 1s", "slos[0] (create-availability): threshold: only a latency SLI"},
		{"name: create-latency", "name: create-availability", "slos[1] (create-availability): name: declared twice"},
		{"name: create-latency", "name: Create_Latency", "slos[1] (Create_Latency): name"},
		{"route: /v1/things, method: POST, sli: avail", "route: v1/things, method: POST, sli: avail", "slos[0] (create-availability): route"},
		{"method: POST, sli: latency", "method: post, sli: latency", "slos[1] (create-latency): method"},
		{"short: 5m", "short: 2h", "alerts.page[0]: want 0 < short < long"},
		{"long: 1h", "long: 60d", "alerts.page[0]: long: 60d is longer than the period"},
		{"burn: 14.4", "burn: 0", "alerts.page[0]: burn"},
		{"min_requests: 100", "min_requests: 0", "alerts.page[0]: min_requests"},
		{"page: [{long: 1h, short: 5m, burn: 14.4, min_requests: 100}]", "page: []", "alerts.page: no window"},
		{"period: 30d", "period: 0s", "period: must be set"},
	} {
		in := strings.Replace(validSLOs, tt.old, tt.new, 1)
		if in == validSLOs {
			t.Fatalf("%q is not in the valid file", tt.old)
		}
		_, err := ParseSLOs([]byte(in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s → %s: error %v, want one containing %q", tt.old, tt.new, err, tt.want)
		}
	}
}
