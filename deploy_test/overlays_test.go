package deploytest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	overlaysDir = "../k8s/overlays"
	e2eOverlay  = "../k8s/overlays/e2e"
	gateEnv     = "READINESS_GATE_CONDITION"
)

// overlay is one rendered overlay: its objects by kind and name, each
// decoded strictly into its API type.
type overlay struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	roles       map[string]*rbacv1.Role
	bindings    map[string]*rbacv1.RoleBinding
	hpa         *autoscalingv2.HorizontalPodAutoscaler // nil if none
}

// renderOverlay renders dir with kustomize and decodes every object. A
// field the API does not know fails, as it would in `kubectl apply`.
func renderOverlay(t *testing.T, dir string) *overlay {
	t.Helper()
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	o := &overlay{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		roles: map[string]*rbacv1.Role{}, bindings: map[string]*rbacv1.RoleBinding{},
	}
	for _, r := range resources.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatal(err)
		}
		var obj metav1.Object
		switch gvk := tm.GroupVersionKind(); gvk.Kind {
		case "Deployment":
			obj = put(o.deployments, r.GetName(), new(appsv1.Deployment))
		case "Service":
			obj = put(o.services, r.GetName(), new(corev1.Service))
		case "ConfigMap":
			obj = put(o.configMaps, r.GetName(), new(corev1.ConfigMap))
		case "Secret":
			obj = put(o.secrets, r.GetName(), new(corev1.Secret))
		case "Role":
			obj = put(o.roles, r.GetName(), new(rbacv1.Role))
		case "RoleBinding":
			obj = put(o.bindings, r.GetName(), new(rbacv1.RoleBinding))
		case "HorizontalPodAutoscaler":
			o.hpa = new(autoscalingv2.HorizontalPodAutoscaler)
			obj = o.hpa
		default:
			// Decoded by the base's tests when the base has them; here
			// only their metadata matters.
			if f, ok := kinds[gvk]; ok {
				obj = f(&manifests{}).(metav1.Object)
			} else {
				obj = new(corev1.Namespace) // the one other kind an overlay adds
			}
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Errorf("%s: %s %s: %v", dir, tm.Kind, r.GetName(), err)
		}
	}
	return o
}

func put[T any](m map[string]*T, name string, v *T) *T { m[name] = v; return v }

func TestOverlays_EachRendersAndDecodesStrictly(t *testing.T) {
	entries, err := os.ReadDir(overlaysDir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		n++
		t.Run(e.Name(), func(t *testing.T) {
			o := renderOverlay(t, filepath.Join(overlaysDir, e.Name()))
			if len(o.deployments) == 0 {
				t.Errorf("renders no Deployment")
			}
		})
	}
	if n == 0 {
		t.Fatalf("no overlays under %s", overlaysDir)
	}
}

// The readiness gate's whole privilege: patch on pods/status, granted to
// the Deployment's service account, in its namespace.
func TestReadinessGate_GrantsOnlyPatchOnPodStatus(t *testing.T) {
	o := renderOverlay(t, e2eOverlay)
	d := o.deployments["payservice"]
	if len(o.roles) != 1 || len(o.bindings) != 1 {
		t.Fatalf("want one Role and one RoleBinding, got %d and %d", len(o.roles), len(o.bindings))
	}
	for _, r := range o.roles {
		want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}}}
		if fmt.Sprint(r.Rules) != fmt.Sprint(want) {
			t.Errorf("Role %s grants %v, want exactly %v", r.Name, r.Rules, want)
		}
		for _, b := range o.bindings {
			if b.RoleRef.Kind != "Role" || b.RoleRef.Name != r.Name {
				t.Errorf("RoleBinding %s binds %s %s, want Role %s", b.Name, b.RoleRef.Kind, b.RoleRef.Name, r.Name)
			}
			want := rbacv1.Subject{Kind: "ServiceAccount", Name: d.Spec.Template.Spec.ServiceAccountName, Namespace: d.Namespace}
			if len(b.Subjects) != 1 || b.Subjects[0] != want {
				t.Errorf("RoleBinding %s binds %v, want only %v", b.Name, b.Subjects, want)
			}
		}
	}
}

// The pod declares the gate the app sets, and gives the app what it needs
// to set it: its name and namespace, and a token.
func TestReadinessGate_DeclaresTheConditionTheAppSets(t *testing.T) {
	o := renderOverlay(t, e2eOverlay)
	spec := o.deployments["payservice"].Spec.Template.Spec
	env := map[string]corev1.EnvVar{}
	for _, e := range spec.Containers[0].Env {
		env[e.Name] = e
	}
	cond := env[gateEnv].Value
	if cond == "" {
		t.Fatalf("the container does not set %s", gateEnv)
	}
	if len(spec.ReadinessGates) != 1 || string(spec.ReadinessGates[0].ConditionType) != cond {
		t.Errorf("readinessGates %v, want exactly the condition the app sets, %s", spec.ReadinessGates, cond)
	}
	for name, field := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if f := env[name].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != field {
			t.Errorf("%s: want it from the downward API, fieldRef %s", name, field)
		}
	}
	if a := spec.AutomountServiceAccountToken; a == nil || !*a {
		t.Errorf("automountServiceAccountToken is not true: the app has no token to set its gate with")
	}
}

// The base's Deployment mounts no token and declares no gate: the
// component is optional.
func TestReadinessGate_IsOffInTheBase(t *testing.T) {
	spec := rendered(t).deployment.Spec.Template.Spec
	if len(spec.ReadinessGates) != 0 || spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("the base declares readiness gates %v or mounts a token: the readiness gate is a component, off by default", spec.ReadinessGates)
	}
}

// No traffic of the end-to-end overlay may leave the cluster: every URL
// the app is given names one of the overlay's own Services.
func TestE2EOverlay_PointsEveryURLAtItsOwnServices(t *testing.T) {
	o := renderOverlay(t, e2eOverlay)
	urls := map[string]string{}
	for _, cm := range o.configMaps {
		for k, v := range cm.Data {
			if strings.HasSuffix(k, "_URL") {
				urls[k] = v
			}
		}
	}
	for _, s := range o.secrets {
		for k, v := range s.Data {
			if strings.HasSuffix(k, "_URL") {
				urls[k] = string(v)
			}
		}
	}
	for _, want := range []string{"DATABASE_URL", "REDIS_URL", "PROVIDER_URL"} {
		if _, ok := urls[want]; !ok {
			t.Errorf("%s is not set by the overlay", want)
		}
	}
	for k, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("%s: %v", k, err)
			continue
		}
		host, port, _ := net.SplitHostPort(u.Host)
		svc, ok := o.services[host]
		if !ok {
			t.Errorf("%s=%s: host %q is not a Service of the overlay", k, raw, host)
			continue
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return fmt.Sprint(p.Port) == port }) {
			t.Errorf("%s=%s: Service %s has no port %s", k, raw, host, port)
		}
	}
}

// Every image is loaded into the nodes, never pulled: the CI cluster has
// no registry.
func TestE2EOverlay_NeverPullsAnImage(t *testing.T) {
	o := renderOverlay(t, e2eOverlay)
	for name, d := range o.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if p := c.ImagePullPolicy; p != corev1.PullIfNotPresent && p != corev1.PullNever {
				t.Errorf("%s/%s: imagePullPolicy %q, want IfNotPresent or Never", name, c.Name, p)
			}
		}
	}
}

// The dev overlay runs one replica with its dependencies in the cluster.
func TestDevOverlay_RunsOneReplicaBesideItsDependencies(t *testing.T) {
	o := renderOverlay(t, filepath.Join(overlaysDir, "dev"))
	var names []string
	for name := range o.deployments {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"fakeprovider", "payservice", "postgres", "redis"}; !slices.Equal(names, want) {
		t.Errorf("Deployments %v, want %v", names, want)
	}
	if o.hpa != nil {
		t.Errorf("the dev overlay keeps the HPA (min %d): it should run one replica", *o.hpa.Spec.MinReplicas)
	}
	if r := o.deployments["payservice"].Spec.Replicas; r != nil && *r != 1 {
		t.Errorf("payservice replicas %d, want 1", *r)
	}
}

// The production example sets what only an operator knows, carries no
// credentials, and keeps no placeholder the base would fail on.
func TestProductionExample_SetsTheProviderAndCarriesNoCredentials(t *testing.T) {
	o := renderOverlay(t, filepath.Join(overlaysDir, "production-example"))
	if len(o.secrets) != 0 {
		t.Errorf("the production example renders a Secret: credentials never live in git")
	}
	if len(o.deployments) != 1 {
		t.Errorf("%d Deployments: the production example runs payservice alone, its dependencies are managed services", len(o.deployments))
	}
	u, err := url.Parse(o.configMaps["payservice-config"].Data["PROVIDER_URL"])
	if err != nil || u.Scheme != "https" || strings.HasSuffix(u.Hostname(), ".invalid") {
		t.Errorf("PROVIDER_URL %v: want the provider's https URL, not the base's placeholder", u)
	}
	img := o.deployments["payservice"].Spec.Template.Spec.Containers[0].Image
	if !strings.Contains(img, "@sha256:") {
		t.Errorf("image %s: pin a digest", img)
	}
}

// The overlays with in-cluster dependencies run the fake provider from its
// own image: the server's image, the one production runs, does not hold it.
func TestLocalOverlays_RunEachBinaryFromItsOwnImage(t *testing.T) {
	for _, overlay := range []string{"dev", "e2e"} {
		t.Run(overlay, func(t *testing.T) {
			o := renderOverlay(t, filepath.Join(overlaysDir, overlay))
			for deployment, want := range map[string]string{"payservice": "payservice:dev", "fakeprovider": "payservice-fakeprovider:dev"} {
				d, ok := o.deployments[deployment]
				if !ok {
					t.Fatalf("no Deployment %s", deployment)
				}
				if got := d.Spec.Template.Spec.Containers[0].Image; got != want {
					t.Errorf("%s runs %s, want %s (what make image builds)", deployment, got, want)
				}
			}
		})
	}
}
