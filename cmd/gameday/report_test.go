package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestWriteReportWritesVerdictReportAndFigures(t *testing.T) {
	dir := t.TempDir()
	r := gameDay()
	if err := writeReport(dir, r); err != nil {
		t.Fatalf("writeReport: %v", err)
	}

	t.Run("verdict.json round-trips", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(dir, "verdict.json"))
		if err != nil {
			t.Fatal(err)
		}
		var got Report
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("decode verdict.json: %v", err)
		}
		if len(got.Runs) != len(r.Runs) || got.Passed != r.Passed {
			t.Errorf("decoded %d runs, passed %v; want %d runs, passed %v", len(got.Runs), got.Passed, len(r.Runs), r.Passed)
		}
	})

	data, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(data)

	t.Run("report.md has a verdict row per run", func(t *testing.T) {
		for _, row := range []string{
			"| provider-outage | protected | yes | 312 ms | 2.4 s | 12% | ok | 95.0 | 180 ms |",
			"| provider-outage | without breaker | not judged | — | — | 340% | ok | 20.5 | 2.0 s |",
			"| primary-failover | protected | no | 1.5 s | — | 80% | 1 failed | 60.0 | 4.5 ms |",
		} {
			if !strings.Contains(mdSection(md, "## Verdict"), row) {
				t.Errorf("verdict table lacks row\n%s", row)
			}
		}
	})

	t.Run("report.md compares the breaker with and without", func(t *testing.T) {
		buys := mdSection(md, "## What each pattern buys")
		for _, want := range []string{
			"### breaker (provider-outage)",
			"`PROVIDER_BREAKER_FAILURES=1000000`",
			"|  | protected | without breaker |",
			"| goodput/s | 95.0 | 20.5 |",
			"| p99 in the fault window | 250 ms | 10.0 s |",
			"| 503 refusals | 900 | 0 |",
			"| wasted provider calls | 0 | 410 |",
			"| recovery time | 2.4 s | — |",
		} {
			if !strings.Contains(buys, want) {
				t.Errorf("What each pattern buys lacks %q", want)
			}
		}
		if strings.Contains(buys, "primary-failover") {
			t.Error("What each pattern buys compares a scenario that ran only once")
		}
	})

	t.Run("report.md names the failed invariant", func(t *testing.T) {
		if !strings.Contains(mdSection(md, "## What failed"), "no payment charged twice") {
			t.Errorf("What failed does not name the failed invariant:\n%s", mdSection(md, "## What failed"))
		}
	})

	t.Run("report.md links every figure", func(t *testing.T) {
		for _, run := range r.Runs {
			if link := "![timeline](" + plotFileName(run) + ")"; !strings.Contains(md, link) {
				t.Errorf("report.md lacks %s", link)
			}
		}
	})

	t.Run("every figure is a small PNG", func(t *testing.T) {
		for _, run := range r.Runs {
			checkPNG(t, filepath.Join(dir, plotFileName(run)))
		}
	})
}

func TestPlotFileNameIsSafeAndDistinct(t *testing.T) {
	tests := []struct {
		scenario, variant, want string
	}{
		{"provider-outage", "protected", "provider-outage-protected.png"},
		{"provider-outage", "without breaker", "provider-outage-without-breaker.png"},
		{"provider-outage", "without retry budget", "provider-outage-without-retry-budget.png"},
		{"Slow DB", "without  bulkhead/pool", "slow-db-without-bulkhead-pool.png"},
		{"../etc", "--x--", "etc-x.png"},
		{"", "", "run.png"},
	}
	safe := regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*\.png$`)
	seen := map[string]bool{}
	for _, tt := range tests {
		got := plotFileName(&Run{Scenario: tt.scenario, Variant: tt.variant})
		if got != tt.want {
			t.Errorf("plotFileName(%q, %q) = %q, want %q", tt.scenario, tt.variant, got, tt.want)
		}
		if !safe.MatchString(got) {
			t.Errorf("plotFileName(%q, %q) = %q, not a safe name", tt.scenario, tt.variant, got)
		}
		if seen[got] {
			t.Errorf("plotFileName gives %q to two runs", got)
		}
		seen[got] = true
	}
}

func TestPlotRunDrawsAnEmptyTimeline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.png")
	r := &Run{Scenario: "empty", Title: "Nothing measured", Variant: "protected"}
	if err := plotRun(r, path); err != nil {
		t.Fatalf("plotRun: %v", err)
	}
	checkPNG(t, path)
}

func TestPlotRunToleratesNonFiniteAndExtremeValues(t *testing.T) {
	r := testRun("bad-numbers", "protected", true)
	r.Timeline[3].Rates["201"] = math.NaN()
	r.Timeline[4].Retries = math.Inf(1)
	r.Timeline[5].BreakerOpen = math.Inf(-1)
	r.Timeline[6].Rates["201"] = -math.MaxFloat64
	r.Timeline[7].Rates["201"] = math.MaxFloat64
	path := filepath.Join(t.TempDir(), "bad.png")
	if err := plotRun(r, path); err != nil {
		t.Fatalf("plotRun: %v", err)
	}
	checkPNG(t, path)
}

func TestReportDurationText(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{4500 * time.Microsecond, "4.5 ms"},
		{312 * time.Millisecond, "312 ms"},
		{999 * time.Millisecond, "999 ms"},
		{time.Second, "1.0 s"},
		{2400 * time.Millisecond, "2.4 s"},
		{-20 * time.Millisecond, "-20 ms"},
	}
	for _, tt := range tests {
		if got := durationText(tt.d); got != tt.want {
			t.Errorf("durationText(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// checkPNG fails the test unless path holds a PNG small enough to keep
// in a report.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("%s is not a PNG", filepath.Base(path))
	}
	if len(data) > 400<<10 {
		t.Errorf("%s is %d KiB, want at most 400", filepath.Base(path), len(data)>>10)
	}
}

// mdSection is the part of md from heading to the next heading of the same
// level, or "" when md lacks the heading.
func mdSection(md, heading string) string {
	start := strings.Index(md, heading+"\n")
	if start < 0 {
		return ""
	}
	rest := md[start+len(heading)+1:]
	if end := strings.Index(rest, "\n## "); end >= 0 {
		return rest[:end]
	}
	return rest
}

// gameDay is a failed game day: the provider outage held with its breaker
// and is compared without it; the primary failover charged a payment twice.
func gameDay() *Report {
	protected := testRun("provider-outage", "protected", true)
	protected.Pattern = "breaker"
	protected.Detect = new(312 * time.Millisecond)
	protected.Recover = new(2400 * time.Millisecond)
	protected.BudgetSpent = 0.12
	protected.Summary = Summary{
		Requests: 12000, ByStatus: map[string]int{"201": 11000, "503": 900},
		Goodput: 95, Failed: 12, P50: 20 * time.Millisecond, P99: 180 * time.Millisecond,
		FaultP99: 250 * time.Millisecond, ProviderCalls: 11100, ClientRetries: 300,
	}

	without := testRun("provider-outage", "without breaker", false)
	without.Pattern = "breaker"
	without.Neutralise = "PROVIDER_BREAKER_FAILURES=1000000"
	without.BudgetSpent = 3.4
	without.Checks[0].OK = false
	without.Summary = Summary{
		Requests: 3000, ByStatus: map[string]int{"201": 2400, "no answer": 600},
		Goodput: 20.5, Failed: 600, P50: 900 * time.Millisecond, P99: 2 * time.Second,
		FaultP99: 10 * time.Second, ProviderCalls: 4000, Wasted: 410, ClientRetries: 1200,
	}

	failover := testRun("primary-failover", "protected", true)
	failover.Detect = new(1500 * time.Millisecond)
	failover.BudgetSpent = 0.8
	failover.Checks[0].OK = false
	failover.Invariants[0].OK = false
	failover.Passed = false
	failover.Summary = Summary{Goodput: 60, P99: 4500 * time.Microsecond}

	return &Report{
		Started:  time.Date(2026, 3, 1, 10, 4, 0, 0, time.UTC),
		Took:     4 * time.Minute,
		Mode:     "short",
		Command:  "go run ./cmd/gameday -short",
		Machine:  "8 cores, linux/amd64, go1.26",
		Setup:    []string{"Postgres primary and standby", "3 payservice instances"},
		Runs:     []*Run{protected, without, failover},
		Failures: []string{"primary-failover: invariant no payment charged twice: got 1 payment charged twice"},
	}
}

// testRun is a 30-second run with a fault from 10 s to 20 s, one event, one
// check and one invariant, all holding.
func testRun(scenario, variant string, judged bool) *Run {
	r := &Run{
		Scenario:   scenario,
		Title:      "Title of " + scenario,
		Variant:    variant,
		Fault:      "the fault",
		Hypothesis: "the hypothesis",
		SLO:        SLO{Availability: 0.995, P99: 300 * time.Millisecond},
		FaultStart: 10 * time.Second,
		FaultEnd:   20 * time.Second,
		End:        30 * time.Second,
		Events:     []Event{{At: 10500 * time.Millisecond, What: "breaker opened on instance 1"}},
		Checks:     []Check{{Name: "p99 held", Want: "< 300 ms", Got: "180 ms", OK: true}},
		Invariants: []Check{{Name: "no payment charged twice", Want: "0", Got: "0", OK: true}},
		Judged:     judged,
		Passed:     true,
	}
	for at := time.Duration(0); at < r.End; at += Step {
		inFault := at >= r.FaultStart && at < r.FaultEnd
		p := Point{
			At:            at,
			Rates:         map[string]float64{"201": 100, "4xx": 1},
			P50:           20 * time.Millisecond,
			P99:           120 * time.Millisecond,
			ReadyReplicas: 3,
		}
		if inFault {
			p.Rates["201"], p.Rates["503"] = 10, 90
			p.BreakerOpen, p.Rejections = 2, 90
			p.PoolWait = 40 * time.Millisecond
		}
		r.Timeline = append(r.Timeline, p)
	}
	return r
}
