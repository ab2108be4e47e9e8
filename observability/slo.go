package observability

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/resiliencekit/payservice/internal/platform/web"
)

//go:embed slos.yaml
var slosYAML []byte

// The kinds of SLI an SLO can measure.
const (
	Availability = "availability" // the share of requests not answered 5xx
	Latency      = "latency"      // the share answered within a threshold
)

// SLOFile is slos.yaml: the objectives, and the policy that alerts on
// them.
type SLOFile struct {
	Period model.Duration `yaml:"period"`
	SLOs   []SLO          `yaml:"slos"`
	Alerts struct {
		Page   []BurnWindow `yaml:"page"`
		Ticket []BurnWindow `yaml:"ticket"`
	} `yaml:"alerts"`
}

// SLO is one objective on one route and method.
type SLO struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Route       string `yaml:"route"`
	Method      string `yaml:"method"`
	SLI         string `yaml:"sli"`
	// Threshold is the latency SLI's bound; a bucket bound of the
	// latency histogram.
	Threshold model.Duration `yaml:"threshold"`
	// Objective is the percentage of requests that must be good.
	Objective float64 `yaml:"objective"`
}

// Ratio is the objective as a fraction: 99.9 is 0.999 (rounded, so that
// the division's last binary digit does not spell it 0.9990000000000001).
func (s SLO) Ratio() float64 { return math.Round(s.Objective*1e10) / 1e12 }

// BurnWindow is one condition of a burn-rate alert.
type BurnWindow struct {
	Long  model.Duration `yaml:"long"`
	Short model.Duration `yaml:"short"`
	// Burn is how many times faster than the period allows the budget
	// must be spent, over both windows.
	Burn float64 `yaml:"burn"`
	// MinRequests is the low-traffic guard: the long window must have
	// seen at least this many requests.
	MinRequests int `yaml:"min_requests"`
}

// LoadSLOs returns the repository's slos.yaml, validated.
func LoadSLOs() (*SLOFile, error) { return ParseSLOs(slosYAML) }

// SLOByName returns the named SLO of the repository's slos.yaml.
func SLOByName(name string) (SLO, error) {
	f, err := LoadSLOs()
	if err != nil {
		return SLO{}, err
	}
	for _, s := range f.SLOs {
		if s.Name == name {
			return s, nil
		}
	}
	return SLO{}, fmt.Errorf("slos.yaml: no SLO named %q", name)
}

var sloName = regexp.MustCompile(`^[a-z][a-z0-9-]*[a-z0-9]$`)

// ParseSLOs decodes and validates an SLO file. Unknown fields are errors:
// a misspelt "objectve" must not silently leave an objective of zero.
// Every problem is reported at once, each naming the SLO and field.
func ParseSLOs(b []byte) (*SLOFile, error) {
	var f SLOFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("slos.yaml: %w", err)
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf("slos.yaml: "+format, a...)) }
	if f.Period <= 0 {
		bad("period: must be set, e.g. 30d")
	}
	if len(f.SLOs) == 0 {
		bad("slos: none declared")
	}
	seen := map[string]bool{}
	for i, s := range f.SLOs {
		at := fmt.Sprintf("slos[%d] (%s)", i, s.Name)
		switch {
		case !sloName.MatchString(s.Name):
			bad("%s: name: want lower-case words joined by '-', got %q", at, s.Name)
		case seen[s.Name]:
			bad("%s: name: declared twice", at)
		}
		seen[s.Name] = true
		if !strings.HasPrefix(s.Route, "/") {
			bad("%s: route: want a route pattern such as /v1/payments, got %q", at, s.Route)
		}
		if s.Method == "" || s.Method != strings.ToUpper(s.Method) {
			bad("%s: method: want an upper-case HTTP method, got %q", at, s.Method)
		}
		if !(s.Objective > 0 && s.Objective < 100) {
			bad("%s: objective: want a percentage above 0 and below 100, got %v", at, s.Objective)
		}
		switch s.SLI {
		case Availability:
			if s.Threshold != 0 {
				bad("%s: threshold: only a latency SLI has one", at)
			}
		case Latency:
			if !slices.Contains(web.LatencyBuckets, time.Duration(s.Threshold).Seconds()) {
				bad("%s: threshold: %v is not a bound of the latency histogram (%v s): a rule could not count the requests under it", at, s.Threshold, web.LatencyBuckets)
			}
		default:
			bad("%s: sli: want %q or %q, got %q", at, Availability, Latency, s.SLI)
		}
	}
	if len(f.Alerts.Page) == 0 {
		bad("alerts.page: no window: nothing would page")
	}
	for sev, ws := range map[string][]BurnWindow{"page": f.Alerts.Page, "ticket": f.Alerts.Ticket} {
		for i, w := range ws {
			at := fmt.Sprintf("alerts.%s[%d]", sev, i)
			if w.Long <= 0 || w.Short <= 0 || w.Short >= w.Long {
				bad("%s: want 0 < short < long, got short %v, long %v", at, w.Short, w.Long)
			}
			if w.Long > f.Period {
				bad("%s: long: %v is longer than the period %v", at, w.Long, f.Period)
			}
			if w.Burn <= 0 {
				bad("%s: burn: want a positive factor, got %v", at, w.Burn)
			}
			if w.MinRequests < 1 {
				bad("%s: min_requests: want at least 1 (the low-traffic guard), got %d", at, w.MinRequests)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &f, nil
}

// windows returns every window the alerts evaluate, shortest first.
func (f *SLOFile) windows() []model.Duration {
	var ws []model.Duration
	for _, w := range slices.Concat(f.Alerts.Page, f.Alerts.Ticket) {
		ws = append(ws, w.Long, w.Short)
	}
	slices.Sort(ws)
	return slices.Compact(ws)
}
