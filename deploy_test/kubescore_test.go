package deploytest

import (
	"bytes"
	"maps"
	"slices"
	"testing"

	"github.com/zegl/kube-score/config"
	"github.com/zegl/kube-score/domain"
	"github.com/zegl/kube-score/parser"
	"github.com/zegl/kube-score/score"
	"github.com/zegl/kube-score/score/checks"
	"github.com/zegl/kube-score/scorecard"
)

// kubeScoreOptional are optional checks the base is meant to pass.
var kubeScoreOptional = map[string]struct{}{
	"container-seccomp-profile":                        {},
	"container-ports-check":                            {},
	"container-memory-requests-equal-limits":           {},
	"container-ephemeral-storage-request-equals-limit": {},
}

// namedReader is a rendered stream under a name kube-score can report.
type namedReader struct {
	*bytes.Reader
	name string
}

func (r namedReader) Name() string { return r.name }

func TestKubeScore_FindsNothingCritical(t *testing.T) {
	m := rendered(t)
	p, err := parser.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := p.ParseFiles([]domain.NamedReader{namedReader{bytes.NewReader(m.rendered), kustomizeDir}})
	if err != nil {
		t.Fatal(err)
	}
	run := &config.RunConfiguration{
		// The oldest Kubernetes the base supports (kustomization.yaml).
		KubernetesVersion:    config.Semver{Major: 1, Minor: 27},
		EnabledOptionalTests: kubeScoreOptional,
	}
	// No check is ignored: the base passes every one kube-score grades
	// critical, and the test fails on any that a change brings back.
	card, err := score.Score(objects, score.RegisterAllChecks(objects, &checks.Config{}, run), run)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	var scored []string
	for _, key := range slices.Sorted(maps.Keys(*card)) {
		obj := (*card)[key]
		scored = append(scored, obj.TypeMeta.Kind+"/"+obj.ObjectMeta.Name)
		for _, c := range obj.Checks {
			if c.Skipped {
				continue
			}
			ran++
			for _, line := range findings(c) {
				switch c.Grade {
				case scorecard.GradeCritical:
					t.Errorf("CRITICAL %s [%s]: %s", obj.HumanFriendlyRef(), c.Check.ID, line)
				case scorecard.GradeWarning:
					t.Logf("WARNING %s [%s]: %s", obj.HumanFriendlyRef(), c.Check.ID, line)
				}
			}
		}
	}
	t.Logf("kube-score ran %d checks on %d objects", ran, len(*card))

	// Nothing critical proves little unless kube-score graded the base:
	// every object it has checks for, and its checks on them. It has
	// none for a ConfigMap or a ServiceAccount.
	want := []string{
		m.deployment.Kind + "/" + m.deployment.Name,
		m.service.Kind + "/" + m.service.Name,
		m.pdb.Kind + "/" + m.pdb.Name,
		m.hpa.Kind + "/" + m.hpa.Name,
		m.networkPolicy.Kind + "/" + m.networkPolicy.Name,
	}
	slices.Sort(scored)
	slices.Sort(want)
	if !slices.Equal(scored, want) {
		t.Errorf("kube-score scored %v, want the rendered %v", scored, want)
	}
	const minChecks = 30 // 37 today; a margin for checks a kube-score upgrade drops
	if ran < minChecks {
		t.Errorf("kube-score ran %d checks, want at least %d: the rest were skipped or never registered", ran, minChecks)
	}
}

// findings renders a check's comments, one line each (at least one line).
func findings(c scorecard.TestScore) []string {
	if len(c.Comments) == 0 {
		return []string{c.Check.Name}
	}
	var lines []string
	for _, com := range c.Comments {
		line := com.Summary
		if com.Path != "" {
			line = com.Path + ": " + line
		}
		if com.Description != "" {
			line += " — " + com.Description
		}
		lines = append(lines, line)
	}
	return lines
}
