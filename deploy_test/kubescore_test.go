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

// kubeScoreIgnored are the checks this base deliberately fails, and why.
var kubeScoreIgnored = map[string]struct{}{
	// It wants imagePullPolicy Always, so the kubelet re-checks pull
	// credentials on every start. The base pins an immutable tag (or a
	// digest) and uses IfNotPresent instead: a pod restarting on a node that
	// has the image then starts even while the registry is down. Clusters
	// that need the credential check enforce it for every pod with the
	// AlwaysPullImages admission plugin.
	"container-image-pull-policy": {},
}

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
	card, err := score.Score(objects, score.RegisterAllChecks(objects, &checks.Config{IgnoredTests: kubeScoreIgnored}, run), run)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, key := range slices.Sorted(maps.Keys(*card)) {
		obj := (*card)[key]
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
	t.Logf("kube-score ran %d checks on %d objects; ignored: %v", ran, len(*card), slices.Sorted(maps.Keys(kubeScoreIgnored)))
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
