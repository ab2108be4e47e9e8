package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// noValue stands in the report for a value that was not measured or did
// not happen.
const noValue = "—"

// writeReport writes the game day into dir, creating it if needed:
// verdict.json for tools, report.md for people, and the timeline figure
// of each run that report.md shows.
func writeReport(dir string, r *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create report directory: %w", err)
	}
	verdict, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode verdict.json: %w", err)
	}
	if err := writeFile(dir, "verdict.json", verdict); err != nil {
		return err
	}
	if err := writeFile(dir, "report.md", []byte(markdown(r))); err != nil {
		return err
	}
	for _, run := range r.Runs {
		name := plotFileName(run)
		if err := plotRun(run, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// writeFile writes one file of the report.
func writeFile(dir, name string, data []byte) error {
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// plotFileName names r's timeline figure after its scenario and variant,
// keeping lowercase letters and digits and turning every other run of
// characters into one hyphen, so that the name is safe in a file system
// and in a Markdown link.
func plotFileName(r *Run) string {
	var b strings.Builder
	gap := false
	for _, c := range strings.ToLower(r.Scenario + " " + r.Variant) {
		if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') {
			if gap && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(c)
			gap = false
			continue
		}
		gap = true
	}
	if b.Len() == 0 {
		return "run.png"
	}
	return b.String() + ".png"
}

// markdown renders the report for a reader who did not write the game day:
// the verdict and how to read it first, then what each pattern buys, then
// every run in detail. The report has already been encoded as JSON, so
// its numbers are finite.
func markdown(r *Report) string {
	var b strings.Builder
	writeHeader(&b, r)
	writeVerdict(&b, r.Runs)
	writeFailures(&b, r.Failures)
	writeHowToRead(&b)
	writeComparisons(&b, r.Runs)
	writeSetup(&b, r.Setup)
	for _, run := range r.Runs {
		writeRun(&b, run)
	}
	return b.String()
}

// writeHeader writes the title and the line that sums the game day up.
func writeHeader(b *strings.Builder, r *Report) {
	verdict := "FAILED"
	if r.Passed {
		verdict = "PASSED"
	}
	fmt.Fprintf(b, "# Game day report\n\n**%s** on %s, %s mode, took %s. Command: %s. Machine: %s.\n\n",
		verdict, r.Started.UTC().Format("2006-01-02T15:04Z07:00"), r.Mode,
		r.Took.Round(time.Second), codeSpan(r.Command), oneLine(r.Machine))
}

// writeVerdict writes one row per run.
func writeVerdict(b *strings.Builder, runs []*Run) {
	b.WriteString("## Verdict\n\n")
	rows := make([][]string, 0, len(runs))
	for _, r := range runs {
		rows = append(rows, []string{
			r.Scenario,
			r.Variant,
			hypothesisHeld(r),
			optionalDuration(r.Detect),
			optionalDuration(r.Recover),
			fmt.Sprintf("%.0f%%", r.BudgetSpent*100),
			invariantsText(r.Invariants),
			fmt.Sprintf("%.1f", r.Summary.Goodput),
			latencyText(r.Summary.P99),
		})
	}
	writeTable(b, []string{
		"Scenario", "Variant", "Hypothesis held", "Detect", "Recover",
		"Error budget spent", "Invariants", "Goodput/s", "p99",
	}, rows)
}

// hypothesisHeld says whether every check of a judged run held; a
// neutralised run's checks describe the run without its pattern and are
// not judged.
func hypothesisHeld(r *Run) string {
	switch {
	case !r.Judged:
		return "not judged"
	case failedChecks(r.Checks) == 0:
		return "yes"
	default:
		return "no"
	}
}

// invariantsText is "ok", or how many invariants failed.
func invariantsText(invariants []Check) string {
	if len(invariants) == 0 {
		return noValue
	}
	if n := failedChecks(invariants); n > 0 {
		return fmt.Sprintf("%d failed", n)
	}
	return "ok"
}

// failedChecks counts the checks that did not hold.
func failedChecks(checks []Check) int {
	n := 0
	for _, c := range checks {
		if !c.OK {
			n++
		}
	}
	return n
}

// writeFailures lists what made the game day fail, if anything did.
func writeFailures(b *strings.Builder, failures []string) {
	if len(failures) == 0 {
		return
	}
	b.WriteString("## What failed\n\n")
	for _, f := range failures {
		fmt.Fprintf(b, "- %s\n", oneLine(f))
	}
	b.WriteString("\n")
}

// writeHowToRead explains the conventions of the figures and tables.
func writeHowToRead(b *strings.Builder) {
	b.WriteString(`## How to read this

- Each run has a figure over the seconds since its start: requests per second by outcome (by when they were sent), latency, what the protections did (retries, refusals, time spent waiting for a Postgres connection), and the breakers and readiness of the two instances. The fault window is shaded; dotted vertical lines are events, numbered as in the run's event list.
- In the latency panel, the dashed line is the p99 that the SLO allows.
- 503 is a refusal: the service says no at once, by design, rather than let the request wait. A 503 within 250 ms does not count against availability; a slower one does. 202 means the outcome is unknown: the payment is processing and the reconciler settles it.
- "no answer" means the client got no HTTP response at all: it timed out or lost the connection.
- Detect is how long after the fault started the service visibly reacted (a breaker or a readiness changed); recover is how long after the fault ended the SLO held again and POSTs succeeded as often as before the fault.
- Error budget spent is the run's failures, fault included, over what the availability objective allows for as many requests: above 100%, the fault cost more than the objective allows. The hypothesis judges the SLO before the fault and after recovery, so a run can pass and still show a large number here.
- Invariants are about the money. They are checked after the reconciler has settled every payment.
- A run "without" a pattern is the same scenario with that pattern neutralised by configuration. It exists only to show what the pattern buys: its hypothesis is not judged, only its invariants are.

`)
}

// comparison is a scenario run with its pattern and without it.
type comparison struct {
	protected, without *Run
}

// writeComparisons puts each neutralised run beside the protected run of
// its scenario: the difference is what the pattern buys.
func writeComparisons(b *strings.Builder, runs []*Run) {
	pairs := comparisons(runs)
	if len(pairs) == 0 {
		return
	}
	b.WriteString("## What each pattern buys\n\n")
	for _, c := range pairs {
		writeComparison(b, c)
	}
}

// comparisons pairs every run without a pattern with the protected run of
// the same scenario, in the order of the neutralised runs.
func comparisons(runs []*Run) []comparison {
	const variant = "protected"
	protected := map[string]*Run{}
	for _, r := range runs {
		if r.Variant == variant {
			protected[r.Scenario] = r
		}
	}
	var pairs []comparison
	for _, r := range runs {
		if r.Variant == variant || r.Pattern == "" {
			continue
		}
		if a, ok := protected[r.Scenario]; ok {
			pairs = append(pairs, comparison{protected: a, without: r})
		}
	}
	return pairs
}

// writeComparison writes one pattern's side-by-side table.
func writeComparison(b *strings.Builder, c comparison) {
	fmt.Fprintf(b, "### %s (%s)\n\n", c.without.Pattern, c.without.Scenario)
	if c.without.Neutralise != "" {
		fmt.Fprintf(b, "The second run neutralised the %s with %s.\n\n", c.without.Pattern, codeSpan(c.without.Neutralise))
	} else {
		fmt.Fprintf(b, "The second run neutralised the %s through configuration.\n\n", c.without.Pattern)
	}
	var rows [][]string
	for _, m := range comparedMetrics() {
		rows = append(rows, []string{m.name, m.value(c.protected), m.value(c.without)})
	}
	// The scenario's own measures (the hypothesis's checks) side by side:
	// they are what the pattern is there to change.
	without := map[string]string{}
	for _, ch := range c.without.Checks {
		without[ch.Name] = ch.Got
	}
	for _, ch := range c.protected.Checks {
		if got, ok := without[ch.Name]; ok {
			rows = append(rows, []string{ch.Name, ch.Got, got})
		}
	}
	writeTable(b, []string{"", c.protected.Variant, c.without.Variant}, rows)
}

// comparedMetric is one row of a comparison.
type comparedMetric struct {
	name  string
	value func(*Run) string
}

// comparedMetrics are what a pattern is expected to change.
func comparedMetrics() []comparedMetric {
	count := func(n int) string { return strconv.Itoa(n) }
	return []comparedMetric{
		{"goodput/s", func(r *Run) string { return fmt.Sprintf("%.1f", r.Summary.Goodput) }},
		{"p99", func(r *Run) string { return latencyText(r.Summary.P99) }},
		{"p99 in the fault window", func(r *Run) string { return latencyText(r.Summary.FaultP99) }},
		{"failed requests", func(r *Run) string { return count(r.Summary.Failed) }},
		{"503 refusals", func(r *Run) string { return count(r.Summary.ByStatus["503"]) }},
		{"outcomes unknown (202), left to the reconciler", func(r *Run) string { return count(r.Summary.ByStatus["202"]) }},
		{"provider calls", func(r *Run) string { return count(r.Summary.ProviderCalls) }},
		{"wasted provider calls", func(r *Run) string { return count(r.Summary.Wasted) }},
		{"client retries", func(r *Run) string { return count(r.Summary.ClientRetries) }},
		{"recovery time", func(r *Run) string { return optionalDuration(r.Recover) }},
	}
}

// writeSetup lists what the game day started and how it was configured.
func writeSetup(b *strings.Builder, setup []string) {
	if len(setup) == 0 {
		return
	}
	b.WriteString("## Setup\n\n")
	for _, s := range setup {
		fmt.Fprintf(b, "- %s\n", oneLine(s))
	}
	b.WriteString("\n")
}

// writeRun writes one run in detail: what was done and expected, its
// figure, what was measured, and what happened when.
func writeRun(b *strings.Builder, r *Run) {
	fmt.Fprintf(b, "## %s — %s\n\n", oneLine(r.Title), oneLine(r.Variant))
	fmt.Fprintf(b, "- **Result:** %s\n", runResult(r))
	fmt.Fprintf(b, "- **Fault:** %s\n", oneLine(r.Fault))
	fmt.Fprintf(b, "- **Hypothesis:** %s\n", oneLine(r.Hypothesis))
	if r.Neutralise != "" {
		fmt.Fprintf(b, "- **Neutralised:** %s\n", codeSpan(r.Neutralise))
	}
	fmt.Fprintf(b, "- **SLO:** availability %s%%, p99 %s (observability/slos.yaml: %s, %s)\n",
		percentText(r.SLO.Availability), latencyText(r.SLO.P99), availabilitySLO, latencySLO)
	fmt.Fprintf(b, "- **Fault window:** %s to %s from the start of the run, which lasted %s\n\n",
		offsetText(r.FaultStart), offsetText(r.FaultEnd), offsetText(r.End))
	fmt.Fprintf(b, "![timeline](%s)\n\n", plotFileName(r))

	b.WriteString("### Checks\n\n")
	writeChecks(b, "Check", r.Checks)
	b.WriteString("### Invariants\n\n")
	writeChecks(b, "Invariant", r.Invariants)
	b.WriteString("### Events\n\n")
	writeEvents(b, r.Events)
}

// runResult is the run's verdict in words.
func runResult(r *Run) string {
	switch {
	case !r.Judged:
		return "for comparison only, not judged; invariants " + invariantsText(r.Invariants)
	case r.Passed:
		return "passed"
	default:
		return "failed"
	}
}

// writeChecks writes a table of checks, headed by what they are, or says
// there were none.
func writeChecks(b *strings.Builder, kind string, checks []Check) {
	if len(checks) == 0 {
		b.WriteString("None.\n\n")
		return
	}
	rows := make([][]string, 0, len(checks))
	for _, c := range checks {
		ok := "✗"
		if c.OK {
			ok = "✓"
		}
		rows = append(rows, []string{c.Name, c.Want, c.Got, ok})
	}
	writeTable(b, []string{kind, "Want", "Got", "OK"}, rows)
}

// writeEvents lists the events, numbered as in the run's figure.
func writeEvents(b *strings.Builder, events []Event) {
	if len(events) == 0 {
		b.WriteString("None.\n\n")
		return
	}
	for i, e := range events {
		fmt.Fprintf(b, "%d. %s: %s\n", i+1, offsetText(e.At), oneLine(e.What))
	}
	b.WriteString("\n")
}

// writeTable writes a Markdown table; cells are made safe for it.
func writeTable(b *strings.Builder, header []string, rows [][]string) {
	writeRow(b, header)
	b.WriteString("|" + strings.Repeat("---|", len(header)) + "\n")
	for _, row := range rows {
		writeRow(b, row)
	}
	b.WriteString("\n")
}

// writeRow writes one row of a Markdown table.
func writeRow(b *strings.Builder, cells []string) {
	escaped := make([]string, len(cells))
	for i, c := range cells {
		escaped[i] = strings.ReplaceAll(oneLine(c), "|", `\|`)
	}
	b.WriteString("| " + strings.Join(escaped, " | ") + " |\n")
}

// oneLine folds s onto one line, so that it cannot break the Markdown
// structure it is written into.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// codeSpan writes s as inline code, fenced with more backticks than it
// contains in a row so that a command quoting one cannot end the span.
func codeSpan(s string) string {
	run, longest := 0, 0
	for _, c := range s {
		run++
		if c != '`' {
			run = 0
		}
		longest = max(longest, run)
	}
	fence := strings.Repeat("`", longest+1)
	if longest > 0 {
		return fence + " " + oneLine(s) + " " + fence
	}
	return fence + oneLine(s) + fence
}

// durationText is d for a reader: milliseconds below a second (with a
// decimal below ten, where local latencies often are), seconds with one
// decimal above.
func durationText(d time.Duration) string {
	switch a := d.Abs(); {
	case a == 0:
		return "0 ms"
	case a < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", inMillis(d))
	case a < time.Second:
		return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}

// optionalDuration is d, or absent when it did not happen.
func optionalDuration(d *time.Duration) string {
	if d == nil {
		return noValue
	}
	return durationText(*d)
}

// latencyText is a latency, or absent when no request was answered.
func latencyText(d time.Duration) string {
	if d <= 0 {
		return noValue
	}
	return durationText(d)
}

// offsetText is an offset from the start of a run.
func offsetText(d time.Duration) string {
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// percentText is a share as a percentage with at most two decimals, so
// that 0.995 reads 99.5.
func percentText(share float64) string {
	return strconv.FormatFloat(math.Round(share*1e4)/100, 'f', -1, 64)
}
