package observability

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository's root, from this package's directory.
const root = ".."

// TestGenerated_FilesAreCurrent fails while a generated file differs from
// what its sources (slos.yaml, the alerts, the dashboard's code) make:
// someone edited one without running `make generate`, or edited the
// output by hand.
func TestGenerated_FilesAreCurrent(t *testing.T) {
	files, err := Generated()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Errorf("%s: %v; run `make generate`", f.Path, err)
			continue
		}
		if !bytes.Equal(got, f.Content) {
			t.Errorf("%s is stale: run `make generate` and commit the result", f.Path)
		}
	}
}

// TestRules_EveryRunbookAnchorIsAHeading checks that the runbook each
// alert links to exists: a heading of docs/runbooks.md whose anchor (as
// GitHub derives it) is the link's.
func TestRules_EveryRunbookAnchorIsAHeading(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, runbooks))
	if err != nil {
		t.Fatal(err)
	}
	var anchors []string
	for line := range strings.Lines(string(doc)) {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			anchors = append(anchors, anchor(h))
		}
	}
	groups, err := RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			link := r.Annotations["runbook"]
			a, ok := strings.CutPrefix(link, runbooks+"#")
			if !ok || !slices.Contains(anchors, a) {
				t.Errorf("alert %s: runbook %q is not a heading of %s (anchors: %v)", r.Alert, link, runbooks, anchors)
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts generated")
	}
}

var notAnchor = regexp.MustCompile(`[^a-z0-9 -]`)

// anchor is the fragment GitHub gives a heading: lower case, punctuation
// dropped, spaces as hyphens.
func anchor(heading string) string {
	h := notAnchor.ReplaceAllString(strings.ToLower(strings.TrimSpace(heading)), "")
	return strings.ReplaceAll(h, " ", "-")
}

func TestAnchor(t *testing.T) {
	for in, want := range map[string]string{
		"Breaker open too long\n":        "breaker-open-too-long",
		"Error budget burn (SLO alerts)": "error-budget-burn-slo-alerts",
	} {
		if got := anchor(in); got != want {
			t.Errorf("anchor(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRuleQueries_NameEveryRecordingAndSignal checks that the live test
// (cmd/server, tag prometheus) is given every recording rule and every
// alert's signals to run.
func TestRuleQueries_NameEveryRecordingAndSignal(t *testing.T) {
	groups, err := RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	qs, err := RuleQueries()
	if err != nil {
		t.Fatal(err)
	}
	wheres := map[string]bool{}
	for _, q := range qs {
		wheres[q.Where] = true
		if q.Expr == "" {
			t.Errorf("%s: empty query", q.Where)
		}
	}
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert != "" && (len(r.signals) == 0 || !wheres["alert "+r.Alert]) {
				t.Errorf("alert %s has no signal to check", r.Alert)
			}
			for _, s := range r.signals {
				if !strings.Contains(r.Expr, s) {
					t.Errorf("alert %s: signal %q is not part of its expression %q", r.Alert, s, r.Expr)
				}
			}
		}
	}
}
