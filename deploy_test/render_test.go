package deploytest

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	kustomizeDir      = "../k8s/base"
	secretExampleFile = "../k8s/base/secret.example.yaml"
)

// manifests are the objects of the kustomize base, one of each kind, plus
// the example Secret that the base deliberately leaves out.
type manifests struct {
	rendered []byte // the YAML stream, as `kubectl kustomize` prints it

	deployment     *appsv1.Deployment
	service        *corev1.Service
	pdb            *policyv1.PodDisruptionBudget
	hpa            *autoscalingv2.HorizontalPodAutoscaler
	networkPolicy  *networkingv1.NetworkPolicy
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap

	secretExample *corev1.Secret
}

// kinds are what the base renders, one object each: for each, where its
// decoded object goes. Any other kind is an error.
var kinds = map[schema.GroupVersionKind]func(*manifests) any{
	appsv1.SchemeGroupVersion.WithKind("Deployment"):                     func(m *manifests) any { return fresh(&m.deployment) },
	corev1.SchemeGroupVersion.WithKind("Service"):                        func(m *manifests) any { return fresh(&m.service) },
	policyv1.SchemeGroupVersion.WithKind("PodDisruptionBudget"):          func(m *manifests) any { return fresh(&m.pdb) },
	autoscalingv2.SchemeGroupVersion.WithKind("HorizontalPodAutoscaler"): func(m *manifests) any { return fresh(&m.hpa) },
	networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy"):            func(m *manifests) any { return fresh(&m.networkPolicy) },
	corev1.SchemeGroupVersion.WithKind("ServiceAccount"):                 func(m *manifests) any { return fresh(&m.serviceAccount) },
	corev1.SchemeGroupVersion.WithKind("ConfigMap"):                      func(m *manifests) any { return fresh(&m.configMap) },
}

// kindList names the expected kinds, for error messages.
func kindList() string {
	var names []string
	for gvk := range kinds {
		names = append(names, gvk.Kind)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// fresh points *p at a new zero T and returns it, to decode into.
func fresh[T any](p **T) *T {
	*p = new(T)
	return *p
}

// renderOnce renders and decodes the base once per test binary: every test
// reads the same objects, and none may modify them.
var renderOnce = sync.OnceValues(func() (*manifests, error) {
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), kustomizeDir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", kustomizeDir, err)
	}
	var m manifests
	if m.rendered, err = resources.AsYaml(); err != nil {
		return nil, err
	}
	seen := map[schema.GroupVersionKind]bool{}
	for _, r := range resources.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			return nil, err
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, err
		}
		gvk := tm.GroupVersionKind()
		place, ok := kinds[gvk]
		switch {
		case !ok:
			// A Secret lands here too: the base must not carry credentials.
			return nil, fmt.Errorf("%s %s: unexpected in the base (kinds expected: one each of %s)", r.GetKind(), r.GetName(), kindList())
		case seen[gvk]:
			return nil, fmt.Errorf("%s %s: a second %s; the tests expect one", r.GetKind(), r.GetName(), gvk.Kind)
		}
		seen[gvk] = true
		if err := decodeStrict(doc, place(&m)); err != nil {
			return nil, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err)
		}
	}
	for gvk := range kinds {
		if !seen[gvk] {
			return nil, fmt.Errorf("the base renders no %s %s", gvk.GroupVersion(), gvk.Kind)
		}
	}

	doc, err := os.ReadFile(secretExampleFile)
	if err != nil {
		return nil, err
	}
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, fmt.Errorf("%s: %w", secretExampleFile, err)
	}
	if tm.APIVersion != "v1" || tm.Kind != "Secret" {
		return nil, fmt.Errorf("%s: %s %s, want a v1 Secret", secretExampleFile, tm.APIVersion, tm.Kind)
	}
	m.secretExample = new(corev1.Secret)
	if err := decodeStrict(doc, m.secretExample); err != nil {
		return nil, fmt.Errorf("%s: %w", secretExampleFile, err)
	}
	return &m, nil
})

// rendered returns the decoded base, or fails the test.
func rendered(t *testing.T) *manifests {
	t.Helper()
	m, err := renderOnce()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// decodeStrict decodes a YAML document as the API server does: field names
// match exactly, and an unknown or repeated field is an error. This is
// sigs.k8s.io/json rather than encoding/json's Decoder with
// DisallowUnknownFields, which matches names case-insensitively and so
// would accept a misspelt `readinessprobe`.
func decodeStrict(doc []byte, into any) error {
	data, err := yaml.YAMLToJSONStrict(doc) // duplicate YAML keys are an error too
	if err != nil {
		return err
	}
	strictErrs, err := json.UnmarshalStrict(data, into, json.DisallowDuplicateFields, json.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func TestRender_NamesAndLabelsEveryObject(t *testing.T) {
	m := rendered(t)
	wantLabels := map[string]string{
		"app.kubernetes.io/name":       "payservice",
		"app.kubernetes.io/instance":   "payservice",
		"app.kubernetes.io/component":  "api",
		"app.kubernetes.io/part-of":    "payservice",
		"app.kubernetes.io/managed-by": "kustomize",
	}
	tests := []struct {
		kind string
		obj  metav1.Object
		name string // "" for the pod template, which has none
	}{
		{"Deployment", m.deployment, "payservice"},
		{"Service", m.service, "payservice"},
		{"PodDisruptionBudget", m.pdb, "payservice"},
		{"HorizontalPodAutoscaler", m.hpa, "payservice"},
		{"NetworkPolicy", m.networkPolicy, "payservice"},
		{"ServiceAccount", m.serviceAccount, "payservice"},
		{"ConfigMap", m.configMap, "payservice-config"},
		{"pod template", &m.deployment.Spec.Template, ""},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			if tt.obj.GetName() != tt.name {
				t.Errorf("named %q, want %q", tt.obj.GetName(), tt.name)
			}
			for k, v := range wantLabels {
				if got := tt.obj.GetLabels()[k]; got != v {
					t.Errorf("label %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}
