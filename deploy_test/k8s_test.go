package deploytest

import (
	"cmp"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/resiliencekit/payservice/internal/app"
)

// Facts about the app that are code, not configuration.
const (
	// healthCheckTimeout bounds each dependency check of /health/ready
	// (api.NewHealth in cmd/server/serve.go).
	healthCheckTimeout = time.Second
	// exitAllowance is the time the grace period keeps, after
	// SHUTDOWN_TIMEOUT, for the shutdown's last bounded wait (exitGrace,
	// 1s), closing pools and exiting.
	exitAllowance = 5 * time.Second
)

// container returns the pod's only container.
func container(t *testing.T, m *manifests) corev1.Container {
	t.Helper()
	cs := m.deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("the pod has %d containers, want 1", len(cs))
	}
	return cs[0]
}

// runtimeVariables are read by the Go runtime, not by app.Load.
var runtimeVariables = []string{"GOMAXPROCS", "GOMEMLIMIT"}

// containerEnv is the environment the container would see: the ConfigMap
// (envFrom), overridden by the container's own env, whose secretKeyRefs are
// read from the example Secret. resourceFieldRefs are left out: the node
// fills them in.
func containerEnv(t *testing.T, m *manifests) map[string]string {
	t.Helper()
	env := map[string]string{}
	for k, v := range m.configMap.Data {
		env[k] = v
	}
	for _, e := range container(t, m).Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			if v, ok := m.secretExample.StringData[e.ValueFrom.SecretKeyRef.Key]; ok {
				env[e.Name] = v
			}
		}
	}
	return env
}

// loadConfig runs app.Load on env and also returns every name Load asked
// for. Load ignores variables it does not know, so a misspelt name in a
// manifest would pass as its default unless checked against these.
func loadConfig(env map[string]string) (cfg app.Config, read map[string]bool, err error) {
	read = map[string]bool{}
	cfg, _, err = app.Load(func(k string) string {
		read[k] = true
		return env[k]
	})
	return cfg, read, err
}

// appConfig loads the app's configuration the way the container would.
func appConfig(t *testing.T, m *manifests) app.Config {
	t.Helper()
	cfg, _, err := loadConfig(containerEnv(t, m))
	if err != nil {
		t.Fatalf("the app would refuse this configuration:\n%v", err)
	}
	return cfg
}

func TestDeployment_SetsOnlyVariablesTheAppReads(t *testing.T) {
	m := rendered(t)
	_, read, err := loadConfig(containerEnv(t, m))
	if err != nil {
		t.Fatalf("the app would refuse this configuration:\n%v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(m.configMap.Data)) {
		if !read[k] {
			t.Errorf("ConfigMap key %s is no variable the app reads (server -h lists them): misspelt?", k)
		}
	}
	for _, e := range container(t, m).Env {
		if !read[e.Name] && !slices.Contains(runtimeVariables, e.Name) {
			t.Errorf("container env %s is no variable the app or the Go runtime reads (server -h lists the app's): misspelt?", e.Name)
		}
	}
}

func TestSelectors_SelectThePodTemplateAndNothingBroader(t *testing.T) {
	m := rendered(t)
	pod := labels.Set(m.deployment.Spec.Template.Labels)
	spec := m.deployment.Spec.Template.Spec

	type selector struct {
		name string
		sel  *metav1.LabelSelector
	}
	selectors := []selector{
		{"Deployment", m.deployment.Spec.Selector},
		{"Service", &metav1.LabelSelector{MatchLabels: m.service.Spec.Selector}},
		{"PodDisruptionBudget", m.pdb.Spec.Selector},
		{"NetworkPolicy", &m.networkPolicy.Spec.PodSelector},
	}
	if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			selectors = append(selectors, selector{"pod anti-affinity", term.PodAffinityTerm.LabelSelector})
		}
	}
	for _, c := range spec.TopologySpreadConstraints {
		selectors = append(selectors, selector{"topology spread", c.LabelSelector})
	}

	for _, tt := range selectors {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(tt.sel)
			switch {
			case err != nil:
				t.Fatal(err)
			case sel.Empty():
				// An empty selector matches every pod in the namespace.
				t.Fatalf("selector %v is empty", tt.sel)
			case !sel.Matches(pod):
				t.Errorf("selector %q does not match the pod template's labels %q", sel, pod)
			}
			// Only the stable identity labels: anything else (component,
			// part-of) would make relabelling change what is selected.
			reqs, _ := sel.Requirements()
			for _, k := range reqs {
				if k.Key() != "app.kubernetes.io/name" && k.Key() != "app.kubernetes.io/instance" {
					t.Errorf("selector uses %q; only app.kubernetes.io/name and /instance belong in selectors", k.Key())
				}
			}
		})
	}
}

func TestDeployment_LeavesTheReplicaCountToTheHPA(t *testing.T) {
	if r := rendered(t).deployment.Spec.Replicas; r != nil {
		t.Errorf("replicas = %d; with an HPA, every apply would reset the count to it", *r)
	}
}

func TestDeployment_RollsOutWithoutLosingCapacity(t *testing.T) {
	s := rendered(t).deployment.Spec.Strategy
	if s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil {
		t.Fatalf("strategy %q, want RollingUpdate with explicit numbers", s.Type)
	}
	if got := s.RollingUpdate.MaxUnavailable; got == nil || *got != intstr.FromInt32(0) {
		t.Errorf("maxUnavailable = %v, want 0", got)
	}
	if got := s.RollingUpdate.MaxSurge; got == nil || *got != intstr.FromInt32(1) {
		t.Errorf("maxSurge = %v, want 1", got)
	}
}

func TestDeployment_SpreadsPodsAcrossNodesAndZones(t *testing.T) {
	spec := rendered(t).deployment.Spec.Template.Spec
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil ||
		!slices.ContainsFunc(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution, func(w corev1.WeightedPodAffinityTerm) bool {
			return w.PodAffinityTerm.TopologyKey == corev1.LabelHostname
		}) {
		t.Error("no preferred pod anti-affinity on kubernetes.io/hostname")
	}
	i := slices.IndexFunc(spec.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
		return c.TopologyKey == corev1.LabelTopologyZone
	})
	if i < 0 {
		t.Fatal("no topology spread constraint on topology.kubernetes.io/zone")
	}
	c := spec.TopologySpreadConstraints[i]
	if c.MaxSkew != 1 {
		t.Errorf("maxSkew %d, want 1", c.MaxSkew)
	}
	if c.WhenUnsatisfiable != corev1.ScheduleAnyway {
		t.Errorf("whenUnsatisfiable %s, want ScheduleAnyway: a zone outage must not leave pods Pending", c.WhenUnsatisfiable)
	}
	if !slices.Contains(c.MatchLabelKeys, "pod-template-hash") {
		t.Errorf("matchLabelKeys %v lacks pod-template-hash: a rollout's old pods would skew the spread", c.MatchLabelKeys)
	}
}

func TestDeployment_ProbesHitHealthEndpointsOnNamedPort(t *testing.T) {
	c := container(t, rendered(t))
	tests := []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startup", c.StartupProbe, "/health/ready"},
		{"readiness", c.ReadinessProbe, "/health/ready"},
		{"liveness", c.LivenessProbe, "/health/live"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.probe == nil || tt.probe.HTTPGet == nil {
				t.Fatalf("no HTTP %s probe", tt.name)
			}
			get := tt.probe.HTTPGet
			if get.Path != tt.path {
				t.Errorf("path %q, want %q", get.Path, tt.path)
			}
			if get.Port != intstr.FromString("http") {
				t.Errorf("port %q, want the named port http", get.Port.String())
			}
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == get.Port.String() }) {
				t.Errorf("the container has no port named %q", get.Port.String())
			}
			if timeout := seconds(tt.probe.TimeoutSeconds); timeout <= healthCheckTimeout {
				t.Errorf("timeoutSeconds %v must exceed the app's own check timeout %v, or a slow dependency fails the probe instead of reporting", timeout, healthCheckTimeout)
			}
		})
	}
}

func TestDeployment_StartupProbeWaitsOutMigrations(t *testing.T) {
	p := container(t, rendered(t)).StartupProbe
	if p == nil {
		t.Fatal("no startup probe: liveness would kill a pod that is still migrating")
	}
	if window := seconds(p.PeriodSeconds * p.FailureThreshold); window < time.Minute {
		t.Errorf("startup window %v (period × failureThreshold); a migration under the advisory lock may take a minute or more", window)
	}
}

func TestDeployment_ContainerPortsAreTheConfiguredListenAddresses(t *testing.T) {
	m := rendered(t)
	cfg, c := appConfig(t, m), container(t, m)
	for _, tt := range []struct{ port, addr string }{
		{"http", cfg.HTTPAddr},
		{"admin", cfg.AdminAddr},
	} {
		t.Run(tt.port, func(t *testing.T) {
			_, port, err := net.SplitHostPort(tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == tt.port })
			if i < 0 {
				t.Fatalf("no container port named %q", tt.port)
			}
			if got := strconv.Itoa(int(c.Ports[i].ContainerPort)); got != port {
				t.Errorf("container port %s is %s, but the app listens on %s", tt.port, got, tt.addr)
			}
		})
	}
}

func TestDeployment_RunsLockedDown(t *testing.T) {
	m := rendered(t)
	spec := m.deployment.Spec.Template.Spec
	pod, c := spec.SecurityContext, container(t, m).SecurityContext
	if pod == nil || c == nil || c.Capabilities == nil {
		t.Fatalf("pod securityContext %v, container securityContext %v: want both, with capabilities", pod, c)
	}
	tests := []struct {
		name string
		ok   bool
	}{
		{"pod runAsNonRoot", is(pod.RunAsNonRoot, true)},
		{"pod runAsUser 65532 (distroless nonroot)", is(pod.RunAsUser, 65532)},
		{"pod runAsGroup 65532", is(pod.RunAsGroup, 65532)},
		{"pod fsGroup 65532", is(pod.FSGroup, 65532)},
		{"pod seccompProfile RuntimeDefault", pod.SeccompProfile != nil && pod.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault},
		{"container runAsNonRoot", is(c.RunAsNonRoot, true)},
		{"container allowPrivilegeEscalation false", is(c.AllowPrivilegeEscalation, false)},
		{"container readOnlyRootFilesystem", is(c.ReadOnlyRootFilesystem, true)},
		{"container not privileged", c.Privileged == nil || !*c.Privileged},
		{"container drops ALL capabilities", slices.Equal(c.Capabilities.Drop, []corev1.Capability{"ALL"})},
		{"container adds no capabilities", len(c.Capabilities.Add) == 0},
		{"pod automountServiceAccountToken false", is(spec.AutomountServiceAccountToken, false)},
		{"pod uses its own ServiceAccount", spec.ServiceAccountName == m.serviceAccount.Name},
		{"ServiceAccount automountServiceAccountToken false", is(m.serviceAccount.AutomountServiceAccountToken, false)},
	}
	for _, tt := range tests {
		if !tt.ok {
			t.Errorf("want %s", tt.name)
		}
	}
}

func TestDeployment_MountsTmpFromASizeLimitedEmptyDir(t *testing.T) {
	m := rendered(t)
	mounts := container(t, m).VolumeMounts
	i := slices.IndexFunc(mounts, func(v corev1.VolumeMount) bool { return v.MountPath == "/tmp" })
	if i < 0 {
		t.Fatal("nothing mounted at /tmp: with a read-only root filesystem, temporary files would fail")
	}
	mount := mounts[i]
	if mount.ReadOnly {
		t.Error("/tmp is mounted read-only")
	}
	vols := m.deployment.Spec.Template.Spec.Volumes
	j := slices.IndexFunc(vols, func(v corev1.Volume) bool { return v.Name == mount.Name })
	switch {
	case j < 0:
		t.Fatalf("/tmp mounts volume %q, which the pod does not declare", mount.Name)
	case vols[j].EmptyDir == nil:
		t.Fatalf("/tmp is volume %q, not an emptyDir", mount.Name)
	case vols[j].EmptyDir.SizeLimit == nil || vols[j].EmptyDir.SizeLimit.Sign() <= 0:
		t.Errorf("/tmp emptyDir has no sizeLimit: runaway writes would fill the node's disk")
	}
}

func TestDeployment_RequestsAndLimitsEveryResource(t *testing.T) {
	r := container(t, rendered(t)).Resources
	for _, list := range []struct {
		name string
		list corev1.ResourceList
	}{{"requests", r.Requests}, {"limits", r.Limits}} {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage} {
			if q, ok := list.list[res]; !ok || q.Sign() <= 0 {
				t.Errorf("no %s %s", res, list.name)
			}
		}
	}
}

func TestDeployment_SizesTheGoRuntimeFromItsLimits(t *testing.T) {
	c := container(t, rendered(t))
	for _, tt := range []struct {
		env      string
		resource corev1.ResourceName
	}{
		{"GOMAXPROCS", corev1.ResourceCPU},
		{"GOMEMLIMIT", corev1.ResourceMemory},
	} {
		t.Run(tt.env, func(t *testing.T) {
			i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == tt.env })
			if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.ResourceFieldRef == nil {
				t.Fatalf("%s is not set from a resourceFieldRef", tt.env)
			}
			ref := c.Env[i].ValueFrom.ResourceFieldRef
			if want := "limits." + string(tt.resource); ref.Resource != want {
				t.Errorf("%s reads %s, want %s", tt.env, ref.Resource, want)
			}
			if ref.ContainerName != "" && ref.ContainerName != c.Name {
				t.Errorf("%s reads container %q's limit, not its own", tt.env, ref.ContainerName)
			}
			// GOMEMLIMIT reads a bare number as bytes and GOMAXPROCS as
			// CPUs: a divisor of 1Mi would set a 256-byte memory limit.
			if !ref.Divisor.IsZero() && ref.Divisor.Cmp(resource.MustParse("1")) != 0 {
				t.Errorf("%s divisor %s, want 1", tt.env, ref.Divisor.String())
			}
			// Without a limit the downward API yields the node's
			// allocatable capacity, not the container's.
			if _, ok := c.Resources.Limits[tt.resource]; !ok {
				t.Errorf("%s follows limits.%s, but the container sets no such limit", tt.env, tt.resource)
			}
		})
	}
}

func TestDeployment_ReadsSecretsOnlyFromSecretKeyRefs(t *testing.T) {
	m := rendered(t)
	c := container(t, m)
	secret := m.secretExample
	tests := []struct {
		env      string
		optional bool
	}{
		{"DATABASE_URL", false},
		{"REDIS_URL", false},
		{"API_KEYS", false},
		{"DATABASE_REPLICA_URL", true},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			if _, ok := m.configMap.Data[tt.env]; ok {
				t.Errorf("the ConfigMap holds %s: a ConfigMap is neither encrypted at rest nor guarded like a Secret", tt.env)
			}
			var refs []corev1.EnvVar
			for _, e := range c.Env {
				if e.Name == tt.env {
					refs = append(refs, e)
				}
			}
			if len(refs) != 1 {
				t.Fatalf("%s is set %d times, want once", tt.env, len(refs))
			}
			e := refs[0]
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Fatalf("%s is not read from a secretKeyRef", tt.env)
			}
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.Name {
				t.Errorf("%s reads Secret %q; the example is %q", tt.env, ref.Name, secret.Name)
			}
			if _, ok := secret.StringData[ref.Key]; !ok {
				t.Errorf("%s reads key %q, which %s does not show", tt.env, ref.Key, secretExampleFile)
			}
			if got := ref.Optional != nil && *ref.Optional; got != tt.optional {
				t.Errorf("%s optional = %t, want %t", tt.env, got, tt.optional)
			}
		})
	}
	for _, from := range c.EnvFrom {
		if from.SecretRef != nil {
			t.Errorf("envFrom reads Secret %q whole: name each key with secretKeyRef instead", from.SecretRef.Name)
		}
	}
	for key := range secret.StringData {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Key == key
		}) {
			t.Errorf("%s shows key %s, which the Deployment never reads", secretExampleFile, key)
		}
	}
}

func TestConfigMap_HoldsNoCredentials(t *testing.T) {
	for k, v := range rendered(t).configMap.Data {
		if u, err := url.Parse(v); err == nil && u.User != nil {
			t.Errorf("%s carries credentials in its URL; move it to the Secret", k)
		}
	}
}

// The base ships no provider, fake or real: overlays name the real one.
func TestConfigMap_ProviderURLIsAPlaceholderOverlaysReplace(t *testing.T) {
	raw := rendered(t).configMap.Data["PROVIDER_URL"]
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || !strings.HasSuffix(u.Hostname(), ".invalid") {
		t.Errorf("PROVIDER_URL %q, want an https placeholder under .invalid (RFC 6761), which never resolves", raw)
	}
}

func TestSecretExample_HoldsOnlyPlaceholders(t *testing.T) {
	s := rendered(t).secretExample
	if len(s.Data) > 0 {
		t.Error("the example has base64 `data`, which hides what it holds: use stringData")
	}
	if len(s.StringData) == 0 {
		t.Fatal("the example shows no keys")
	}
	for k, v := range s.StringData {
		if !strings.Contains(v, "REPLACE_ME") {
			t.Errorf("%s = %q is not an obvious placeholder (REPLACE_ME)", k, v)
		}
	}
}

func TestService_RoutesNamedPortsToThePods(t *testing.T) {
	m := rendered(t)
	svc := m.service.Spec
	if svc.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("type %s, want ClusterIP: exposure is the Ingress' or Gateway's job", svc.Type)
	}
	for _, tt := range []struct {
		name   string
		port   int32
		target string
	}{
		{"http", 80, "http"},
		{"admin", 9090, "admin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			i := slices.IndexFunc(svc.Ports, func(p corev1.ServicePort) bool { return p.Name == tt.name })
			if i < 0 {
				t.Fatalf("no Service port named %q", tt.name)
			}
			p := svc.Ports[i]
			if p.Port != tt.port || p.TargetPort != intstr.FromString(tt.target) {
				t.Errorf("port %d → %q, want %d → the named port %q", p.Port, p.TargetPort.String(), tt.port, tt.target)
			}
			if !slices.ContainsFunc(container(t, m).Ports, func(cp corev1.ContainerPort) bool { return cp.Name == tt.target }) {
				t.Errorf("the container has no port named %q", tt.target)
			}
		})
	}
}

func TestPodDisruptionBudget_AllowsOneDisruptionAndNeverBlocksDrains(t *testing.T) {
	spec := rendered(t).pdb.Spec
	if spec.MaxUnavailable == nil || *spec.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("maxUnavailable = %v, want 1", spec.MaxUnavailable)
	}
	if spec.MinAvailable != nil {
		t.Errorf("minAvailable = %v: it cannot follow the HPA's count", spec.MinAvailable)
	}
	if p := spec.UnhealthyPodEvictionPolicy; p == nil || *p != policyv1.AlwaysAllow {
		t.Errorf("unhealthyPodEvictionPolicy = %v, want AlwaysAllow: a crash-looping pod must not block node drains", p)
	}
}

func TestHPA_ScalesTheDeploymentOnCPUFromThree(t *testing.T) {
	m := rendered(t)
	spec := m.hpa.Spec
	if ref := spec.ScaleTargetRef; ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != m.deployment.Name {
		t.Errorf("scaleTargetRef %s %s %s, want apps/v1 Deployment %s", ref.APIVersion, ref.Kind, ref.Name, m.deployment.Name)
	}
	if spec.MinReplicas == nil || *spec.MinReplicas != 3 {
		t.Errorf("minReplicas = %v, want 3 (one per zone; two left while the PDB lets one go)", spec.MinReplicas)
	}
	if spec.MaxReplicas < 6 {
		t.Errorf("maxReplicas = %d, want at least 6", spec.MaxReplicas)
	}
	if !slices.ContainsFunc(spec.Metrics, func(ms autoscalingv2.MetricSpec) bool {
		return ms.Type == autoscalingv2.ResourceMetricSourceType && ms.Resource != nil &&
			ms.Resource.Name == corev1.ResourceCPU &&
			ms.Resource.Target.Type == autoscalingv2.UtilizationMetricType &&
			ms.Resource.Target.AverageUtilization != nil
	}) {
		t.Error("no CPU utilization metric")
	}
	if b := spec.Behavior; b == nil || b.ScaleDown == nil || b.ScaleDown.StabilizationWindowSeconds == nil {
		t.Error("no scale-down stabilization window")
	}
}

func TestNetworkPolicy_DeniesByDefaultInBothDirections(t *testing.T) {
	got := rendered(t).networkPolicy.Spec.PolicyTypes
	for _, want := range []string{"Ingress", "Egress"} {
		if !slices.ContainsFunc(got, func(p networkingv1.PolicyType) bool { return string(p) == want }) {
			t.Errorf("policyTypes %v lacks %s: that direction would be wide open", got, want)
		}
	}
}

func TestNetworkPolicy_AdmitsTheAdminPortOnlyFromMonitoring(t *testing.T) {
	// Whether a rule admits the admin port from the monitoring namespace
	// and nothing else: without one, Prometheus cannot scrape the pods.
	scraped := false
	for i, r := range rendered(t).networkPolicy.Spec.Ingress {
		// A rule without ports admits every port, the admin port included
		// (`- {}` admits everything from everywhere).
		if len(r.Ports) == 0 {
			t.Errorf("ingress rule %d admits every port, the admin port included", i)
		}
		for _, p := range r.Ports {
			if p.Port == nil {
				t.Errorf("ingress rule %d admits every port", i)
				continue
			}
			switch p.Port.String() {
			case "http":
				// The public API: open, by design (narrowed per cluster).
			case "admin":
				// A rule without peers admits from everywhere.
				if len(r.From) == 0 {
					t.Errorf("ingress rule %d admits the admin port from anywhere", i)
					continue
				}
				onlyMonitoring := true
				for _, peer := range r.From {
					if peer.IPBlock != nil || !selectsOnlyNamespace(peer.NamespaceSelector, "monitoring") {
						t.Errorf("ingress rule %d admits the admin port from %+v, want only the monitoring namespace", i, peer)
						onlyMonitoring = false
					}
				}
				scraped = scraped || onlyMonitoring
			default:
				t.Errorf("ingress rule %d admits port %s, which the container does not serve", i, p.Port.String())
			}
		}
	}
	if !scraped {
		t.Error("no ingress rule admits the admin port from the monitoring namespace alone: Prometheus cannot scrape it")
	}
}

// selectsOnlyNamespace reports whether sel requires the namespace's
// kubernetes.io/metadata.name label to be name. The API server sets that
// label to each namespace's name, so no other namespace can match; a
// selector on any other label could match namespaces anyone may label.
func selectsOnlyNamespace(sel *metav1.LabelSelector, name string) bool {
	if sel == nil { // no namespaceSelector: the policy's own namespace
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	reqs, _ := s.Requirements()
	for _, r := range reqs {
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			if r.Key() == "kubernetes.io/metadata.name" && slices.Equal(r.ValuesUnsorted(), []string{name}) {
				return true
			}
		}
	}
	return false
}

func TestNetworkPolicy_AllowsEgressOnlyToItsDependencies(t *testing.T) {
	m := rendered(t)
	pod := labels.Set(m.deployment.Spec.Template.Labels)
	provider, err := url.Parse(appConfig(t, m).Provider.URL)
	if err != nil {
		t.Fatal(err)
	}
	providerPort := cmp.Or(provider.Port(), map[string]string{"https": "443", "http": "80"}[provider.Scheme])
	// Every allowed destination, and a pod of it the rule must select; nil
	// for the provider, outside the cluster, reached by address (ipBlock).
	want := map[string]labels.Set{
		"UDP/53":              {"k8s-app": "kube-dns"},
		"TCP/53":              {"k8s-app": "kube-dns"},
		"TCP/5432":            {"app.kubernetes.io/name": "postgres"},
		"TCP/6379":            {"app.kubernetes.io/name": "redis"},
		"TCP/" + providerPort: nil,
	}
	got := map[string]bool{}
	for i, r := range m.networkPolicy.Spec.Egress {
		if len(r.Ports) == 0 {
			t.Errorf("egress rule %d allows every port", i)
		}
		if len(r.To) == 0 {
			t.Errorf("egress rule %d allows every destination", i)
		}
		for _, p := range r.Ports {
			if p.Port == nil {
				t.Errorf("egress rule %d allows every port", i)
				continue
			}
			protocol := corev1.ProtocolTCP // the API's default
			if p.Protocol != nil {
				protocol = *p.Protocol
			}
			key := string(protocol) + "/" + p.Port.String()
			got[key] = true
			target, ok := want[key]
			if !ok {
				t.Errorf("egress rule %d allows %s, not a dependency", i, key)
				continue
			}
			for _, peer := range r.To {
				switch {
				case target == nil && (peer.IPBlock == nil || peer.IPBlock.CIDR == ""):
					t.Errorf("egress %s: the provider (PROVIDER_URL) is outside the cluster; peer %+v is no ipBlock", key, peer)
					continue
				case peer.IPBlock != nil:
					continue // the provider, or a managed service, by address (see networkpolicy.yaml)
				}
				sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				switch {
				case peer.PodSelector == nil || err != nil:
					t.Errorf("egress %s: peer %+v selects no pods by label", key, peer)
				case !sel.Matches(target):
					t.Errorf("egress %s: selector %q misses the dependency's pods %q", key, sel, target)
				case sel.Matches(pod):
					// kustomize's includeSelectors rewrites peers' matchLabels
					// into payservice's own labels.
					t.Errorf("egress %s: selector %q selects payservice itself", key, sel)
				}
			}
		}
	}
	for key := range want {
		if !got[key] {
			t.Errorf("no egress rule allows %s", key)
		}
	}
}

func TestShutdown_GracePeriodOutlastsDrainAndShutdownTimeout(t *testing.T) {
	m := rendered(t)
	cfg := appConfig(t, m)
	grace := m.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil {
		t.Fatal("terminationGracePeriodSeconds unset")
	}
	need := cfg.Shutdown.Drain + cfg.Shutdown.Timeout + exitAllowance
	if got := time.Duration(*grace) * time.Second; got < need {
		t.Errorf("terminationGracePeriodSeconds %v < SHUTDOWN_DRAIN_DELAY %v + SHUTDOWN_TIMEOUT %v + %v to exit: requests in flight would be killed",
			got, cfg.Shutdown.Drain, cfg.Shutdown.Timeout, exitAllowance)
	}
}

// endpointPropagation is what the drain keeps, after the kubelet marks a
// pod unready, for the EndpointSlice update to reach every node's
// kube-proxy and the load balancers: about a second in a quiet cluster,
// several in a busy one.
const endpointPropagation = 3 * time.Second

// When a pod is deleted through the API, its endpoints turn not-ready at
// once, whatever the probe says. But when the kubelet stops a container of
// a pod that is not being deleted (a liveness-probe restart, for one), and
// for the `serving` condition kube-proxy falls back on when only
// terminating endpoints remain, the readiness probe is the only signal. It
// must fail, and the endpoint update spread, within the drain delay, while
// the app still serves; otherwise traffic is sent to a closed listener.
func TestShutdown_ReadinessFailsBeforeTheListenerCloses(t *testing.T) {
	m := rendered(t)
	cfg := appConfig(t, m)
	p := container(t, m).ReadinessProbe
	if p == nil {
		t.Fatal("no readiness probe")
	}
	// SIGTERM just after a passing probe: the next failureThreshold probes,
	// one period apart, mark it unready; the last may take its whole
	// timeout to fail.
	notice := seconds(p.PeriodSeconds*p.FailureThreshold + p.TimeoutSeconds)
	if notice+endpointPropagation > cfg.Shutdown.Drain {
		t.Errorf("readiness needs up to %v (period × failureThreshold + timeout) to notice shutdown, + %v for endpoints to follow = %v, more than SHUTDOWN_DRAIN_DELAY %v",
			notice, endpointPropagation, notice+endpointPropagation, cfg.Shutdown.Drain)
	}
}

func TestShutdown_LetsRequestsInFlightFinish(t *testing.T) {
	cfg := appConfig(t, rendered(t))
	if cfg.Shutdown.Timeout < cfg.RequestTimeout {
		t.Errorf("SHUTDOWN_TIMEOUT %v < REQUEST_TIMEOUT %v: a request started just before the listener closed may be cut off", cfg.Shutdown.Timeout, cfg.RequestTimeout)
	}
}

// Postgres' defaults: max_connections 100, of which
// superuser_reserved_connections 3 are not for applications.
const postgresAppConnections = 100 - 3

// At full scale, a rollout runs the HPA's maximum plus its surge. The
// Deployment does not wait for the pods it replaces to terminate, and each
// keeps its pool open through its grace period (it serves through the
// drain): when new pods get ready faster than old ones go, every old pod
// may be terminating at once.
func TestConfig_PostgresConnectionsFitAtFullScale(t *testing.T) {
	m := rendered(t)
	cfg := appConfig(t, m)
	maxReplicas := int(m.hpa.Spec.MaxReplicas)
	surge := 0
	if u := m.deployment.Spec.Strategy.RollingUpdate; u != nil && u.MaxSurge != nil {
		var err error
		if surge, err = intstr.GetScaledValueFromIntOrPercent(u.MaxSurge, maxReplicas, true); err != nil {
			t.Fatal(err)
		}
	}
	terminating := maxReplicas
	pods := maxReplicas + surge + terminating
	if total := pods * cfg.Postgres.Pool.MaxOpenConns; total > postgresAppConnections {
		t.Errorf("%d pods (HPA max %d + surge %d + %d terminating) × DB_MAX_OPEN_CONNS %d = %d connections, over the %d a default Postgres allows",
			pods, maxReplicas, surge, terminating, cfg.Postgres.Pool.MaxOpenConns, total, postgresAppConnections)
	}
}

// seconds converts a probe's int32 seconds field.
func seconds(s int32) time.Duration { return time.Duration(s) * time.Second }

// is reports whether p is set to want.
func is[T comparable](p *T, want T) bool { return p != nil && *p == want }
