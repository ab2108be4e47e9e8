package deploytest

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const workflowFile = "../.github/workflows/ci.yml"

// makeTargets returns the make targets a script calls, in order, once each.
func makeTargets(script string) []string {
	var targets []string
	for _, m := range regexp.MustCompile(`(?m)^\s*make\s+([a-z0-9-]+)`).FindAllStringSubmatch(script, -1) {
		if !slices.Contains(targets, m[1]) {
			targets = append(targets, m[1])
		}
	}
	return targets
}

// What passes in the user's GitHub repository passes in .ci/run and back:
// both call the same make targets, and every one of them exists.
func TestWorkflow_CallsTheSameMakeTargetsAsCIRun(t *testing.T) {
	raw, err := os.ReadFile(workflowFile)
	if err != nil {
		t.Fatal(err)
	}
	// Only what this test needs; make lint checks the whole file with
	// actionlint.
	var w struct {
		Jobs map[string]struct {
			Steps []struct {
				Run  string `json:"run"`
				With struct {
					GoVersion string `json:"go-version"`
				} `json:"with"`
			} `json:"steps"`
		} `json:"jobs"`
	}
	if err := yaml.Unmarshal(raw, &w); err != nil {
		t.Fatalf("%s: %v", workflowFile, err)
	}
	gomod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	var workflow []string
	for name, job := range w.Jobs {
		for _, s := range job.Steps {
			if v := s.With.GoVersion; v != "" && v != string(goLine[1])+".x" {
				t.Errorf("job %s sets up Go %s, want %s.x: go.mod's, at its newest patch", name, v, goLine[1])
			}
			for _, target := range makeTargets(s.Run) {
				if !slices.Contains(workflow, target) {
					workflow = append(workflow, target)
				}
			}
		}
	}
	script, err := os.ReadFile(filepath.Join("..", ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	ciRun := makeTargets(string(script))
	slices.Sort(workflow)
	slices.Sort(ciRun)
	if len(workflow) == 0 || !slices.Equal(workflow, ciRun) {
		t.Errorf("the workflow calls make %v, .ci/run calls make %v: keep them the same", workflow, ciRun)
	}
	makefile, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range workflow {
		if !strings.Contains(string(makefile), "\n"+target+":") {
			t.Errorf("make %s: no such target in the Makefile", target)
		}
	}
}
