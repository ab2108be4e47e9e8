//go:build k8se2e

// Package k8se2e deploys payservice into a real Kubernetes cluster and
// proves what its manifests promise: probes that gate readiness on
// migrations and never restart a pod for a dependency's outage, a readiness
// gate the app sets itself, a rolling update and pod deletions under load
// that fail no request and lose no payment, a drain that the
// PodDisruptionBudget stops, an HPA that measures CPU, and pods that
// schedule under their anti-affinity rules.
//
// It runs against whatever cluster KUBECONFIG names (kind on a laptop, the
// offline cluster of .ci/offline/k8s in CI), with the build tag k8se2e:
//
//	make k8s-e2e K8S_E2E_LOAD='kind load docker-image'
//
// K8S_E2E_LOAD is the command that copies local Docker images into the
// cluster's nodes; it gets the image names as arguments. Everything lives
// in the namespace payservice-e2e, deleted at the end (K8S_E2E_KEEP=1
// keeps it for a look).
package k8se2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"
	corev1 "k8s.io/api/core/v1"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/payments/paymentsaudit"
)

const (
	namespace   = "payservice-e2e" // k8s/overlays/e2e
	overlay     = "../../k8s/overlays/e2e"
	appSelector = "app.kubernetes.io/name=payservice"
	gate        = "payservice.dev/migrated"          // k8s/components/readiness-gate
	fieldOwner  = "payservice"                       // the app's fieldManager when it patches its gate
	apiKey      = "dev_key_do_not_use_in_production" // k8s/components/in-cluster-dependencies
	replicas    = 3                                  // the overlay's HPA pins them
	rate        = 50                                 // payments a second while a disruption happens
	// Image tags the suite gives K8S_E2E_IMAGE: a rolling update goes from
	// the first to the second.
	tagBefore, tagAfter = "e2e-1", "e2e-2"
	loadgenImage        = "payservice-loadgen:e2e"
)

// suite is the deployed service and what the tests have learnt about it.
type suite struct {
	k     *kube
	load  string           // the load generator's address (a port-forward)
	acked map[string]int64 // every acknowledged payment: amount by id
}

func TestKubernetes(t *testing.T) {
	s := deploy(t)
	// In this order: each leaves the service as it found it, three pods
	// Ready, and the rolling update needs the first image still running.
	t.Run("PodsAreReadyOnlyOnceTheAppSetsItsReadinessGate", s.readyOnlyThroughTheGate)
	t.Run("WithoutItsRBACANewPodStaysUnreadyAndTheAppSaysWhy", s.gateWithoutRBAC)
	t.Run("PostgresDownTakesPodsOutOfServiceAndRestartsNone", s.postgresDown)
	t.Run("RedisDownLeavesEveryPodReady", s.redisDown)
	t.Run("RollingUpdateUnderLoadFailsNoRequest", s.rollingUpdate)
	t.Run("DrainEvictsWhatThePDBAllowsAndNoMore", s.drain)
	t.Run("GracefulDeletionUnderLoadFailsNoRequestAndWithdrawsTheGate", s.gracefulDeletion)
	t.Run("ForcedDeletionUnderLoadLosesNoAcknowledgedPayment", s.forcedDeletion)
	t.Run("HPAMeasuresCPU", s.hpa)
	t.Run("PodsScheduleUnderTheirAntiAffinityAndSpread", s.scheduling)
	t.Run("EveryAcknowledgedPaymentIsChargedOnceAndRecorded", s.audit)
}

// deploy loads the images, applies the overlay and starts the load
// generator. The namespace is deleted when the test ends.
func deploy(t *testing.T) *suite {
	environment(t, "KUBECONFIG", "it names the cluster to deploy into")
	load := strings.Fields(environment(t, "K8S_E2E_LOAD",
		"the command that copies local Docker images into the cluster's nodes, e.g. 'kind load docker-image'"))
	image := envOr("K8S_E2E_IMAGE", "payservice:dev")
	provider := envOr("K8S_E2E_FAKEPROVIDER_IMAGE", "payservice-fakeprovider:dev")
	postgres := envOr("K8S_E2E_POSTGRES_IMAGE", "postgres:17-alpine")
	redis := envOr("K8S_E2E_REDIS_IMAGE", "redis:7-alpine")
	k := &kube{kubectl: envOr("KUBECTL", "kubectl"), ns: namespace}

	start := time.Now()
	docker(t, "tag", image, "payservice:"+tagBefore)
	docker(t, "tag", image, "payservice:"+tagAfter)
	buildLoadgen(t)
	loadCmd := exec.Command(load[0], append(load[1:], "payservice:"+tagBefore, "payservice:"+tagAfter, provider, loadgenImage, postgres, redis)...)
	if out, err := loadCmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(loadCmd.Args, " "), err, out)
	}
	t.Logf("images built and loaded in %v", time.Since(start).Round(time.Second))

	// A run that was interrupted may have left the namespace behind.
	if _, err := k.run("delete", "namespace", namespace, "--ignore-not-found", "--wait", "--timeout=3m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanUp(t, k) })

	dir := kustomization(t, map[string]string{"payservice": "payservice:" + tagBefore, "payservice-fakeprovider": provider, "postgres": postgres, "redis": redis})
	start = time.Now()
	k.must(t, "apply", "-k", dir)
	k.must(t, "rollout", "status", "deployment/postgres", "deployment/redis", "deployment/fakeprovider", "deployment/payservice", "--timeout=5m")
	t.Logf("deployed, %d pods Ready, in %v", replicas, time.Since(start).Round(time.Second))

	k.must(t, "apply", "-f", loadgenManifest(t))
	k.must(t, "wait", "pod/loadgen", "--for=condition=Ready", "--timeout=2m")
	s := &suite{k: k, acked: map[string]int64{}}
	s.load = "http://" + k.portForward(t, "pod/loadgen", 8080)
	s.waitReady(t, 2*time.Minute)
	return s
}

// cleanUp shows the state of a failed run, then deletes the namespace and
// undoes a drain's cordon.
func cleanUp(t *testing.T, k *kube) {
	if t.Failed() {
		for _, args := range [][]string{
			{"get", "pods,endpointslices", "-o", "wide"},
			{"get", "events", "--sort-by=.lastTimestamp"},
			{"logs", "-l", appSelector, "--tail=15", "--prefix"},
		} {
			out, _ := k.run(args...)
			t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		}
	}
	for _, n := range nodes(t, k) {
		_, _ = k.run("uncordon", n) // best effort: a node that is not cordoned says so
	}
	if os.Getenv("K8S_E2E_KEEP") == "1" {
		t.Logf("K8S_E2E_KEEP=1: namespace %s kept", namespace)
		return
	}
	if out, err := k.run("delete", "namespace", namespace, "--ignore-not-found", "--wait", "--timeout=3m"); err != nil {
		t.Errorf("delete namespace: %v\n%s", err, out)
	}
}

// kustomization writes a kustomization that is the e2e overlay with the
// given images (by name in the manifests), and returns its directory.
func kustomization(t *testing.T, images map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	abs, err := filepath.Abs(overlay)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, abs) // kustomize refuses absolute paths
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\nimages:\n", rel)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range images {
			if !yield(n) {
				return
			}
		}
	}) {
		ref := images[name]
		i := strings.LastIndex(ref, ":")
		if i < 0 || strings.Contains(ref[i:], "/") {
			t.Fatalf("image %q: want name:tag", ref)
		}
		fmt.Fprintf(&b, "  - name: %s\n    newName: %s\n    newTag: %q\n", name, ref[:i], ref[i+1:])
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildLoadgen builds ./loadgen into a one-file image, FROM scratch: no
// base image to pull.
func buildLoadgen(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "loadgen"), "./loadgen")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./loadgen: %v\n%s", err, out)
	}
	dockerfile := "FROM scratch\nCOPY loadgen /loadgen\nUSER 65532:65532\nENTRYPOINT [\"/loadgen\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("docker", "build", "-q", "-t", loadgenImage, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0") // the classic builder: no buildx plugin needed
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build loadgen: %v\n%s", err, out)
	}
}

func loadgenManifest(t *testing.T) string {
	t.Helper()
	m := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: loadgen
  labels: {app.kubernetes.io/name: loadgen}
spec:
  automountServiceAccountToken: false
  containers:
    - name: loadgen
      image: %s
      imagePullPolicy: IfNotPresent
      env:
        - {name: TARGET, value: "http://payservice"}
        - {name: API_KEY, value: %q}
      ports:
        - {containerPort: 8080}
      readinessProbe:
        tcpSocket: {port: 8080}
        periodSeconds: 1
`, loadgenImage, apiKey)
	f := filepath.Join(t.TempDir(), "loadgen.yaml")
	if err := os.WriteFile(f, []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// waitReady waits until exactly the Deployment's pods are Ready, none
// terminating or pending.
func (s *suite) waitReady(t *testing.T, timeout time.Duration) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, timeout, time.Second, fmt.Sprintf("%d pods Ready", replicas), func() (bool, string) {
		pods = s.k.pods(t, appSelector)
		ready := 0
		var states []string
		for _, p := range pods {
			if isReady(p) {
				ready++
			}
			states = append(states, fmt.Sprintf("%s ready=%v phase=%s deleting=%v", p.Name, isReady(p), p.Status.Phase, p.DeletionTimestamp != nil))
		}
		return ready == replicas && len(pods) == replicas, strings.Join(states, "; ")
	})
	return pods
}

// underLoad sends payments through the Service while disrupt runs, and
// for a few seconds either side; it returns what the load generator saw.
func (s *suite) underLoad(t *testing.T, disrupt func()) report {
	t.Helper()
	post(t, s.load+fmt.Sprintf("/start?rate=%d", rate), nil)
	time.Sleep(3 * time.Second) // a steady state before the disruption
	disrupt()
	time.Sleep(3 * time.Second) // and after it
	var r report
	post(t, s.load+"/stop", &r)
	for _, a := range r.Acknowledged {
		s.acked[a.ID] = a.Amount
	}
	t.Logf("load: %d payments, %d requests, %d failed, %d never acknowledged; latency p50 %.0f ms, p99 %.0f ms",
		r.Payments, r.Attempts, r.FailedAttempts, r.GivenUp, r.LatencyP50MS, r.LatencyP99MS)
	for _, f := range r.Failures {
		t.Logf("  failed: %s", f)
	}
	if r.Payments < rate {
		t.Errorf("only %d payments were sent: the load generator did not run", r.Payments)
	}
	return r
}

// report is the load generator's (loadgen.Report).
type report struct {
	Payments     int `json:"payments"`
	Acknowledged map[string]struct {
		ID     string `json:"id"`
		Amount int64  `json:"amount"`
	} `json:"acknowledged"`
	Attempts       int      `json:"attempts"`
	FailedAttempts int      `json:"failed_attempts"`
	Failures       []string `json:"failures"`
	GivenUp        int      `json:"given_up"`
	LatencyP50MS   float64  `json:"latency_p50_ms"`
	LatencyP99MS   float64  `json:"latency_p99_ms"`
}

func post(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %s: %s", url, resp.Status, b)
	}
	if into != nil {
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("POST %s: %v: %s", url, err, b)
		}
	}
}

func nodes(t *testing.T, k *kube) []string {
	var list corev1.NodeList
	if err := k.get(&list, "nodes"); err != nil {
		t.Error(err)
		return nil
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	return names
}

func (s *suite) readyOnlyThroughTheGate(t *testing.T) {
	for _, p := range s.waitReady(t, time.Minute) {
		g, ok := condition(p, gate)
		if !ok || g.Status != corev1.ConditionTrue {
			t.Errorf("%s: Ready without condition %s True (%+v): the gate is not declared or not enforced", p.Name, gate, g)
			continue
		}
		ready, _ := condition(p, corev1.PodReady)
		if ready.LastTransitionTime.Before(&g.LastTransitionTime) {
			t.Errorf("%s: Ready at %v, before its gate was set at %v", p.Name, ready.LastTransitionTime, g.LastTransitionTime)
		}
		if !slices.ContainsFunc(p.Spec.ReadinessGates, func(r corev1.PodReadinessGate) bool { return r.ConditionType == gate }) {
			t.Errorf("%s: no readiness gate %s in its spec", p.Name, gate)
		}
		// Who wrote the condition: the app, through the status subresource.
		var full corev1.Pod // kubectl leaves managedFields out unless asked
		if err := s.k.get(&full, "pod", p.Name, "--show-managed-fields"); err != nil {
			t.Fatal(err)
		}
		setByApp := slices.ContainsFunc(full.ManagedFields, func(m metav1.ManagedFieldsEntry) bool {
			return m.Manager == fieldOwner && m.Subresource == "status" && m.FieldsV1 != nil && strings.Contains(string(m.FieldsV1.Raw), gate)
		})
		if !setByApp {
			t.Errorf("%s: condition %s was not written by field manager %q on the status subresource", p.Name, gate, fieldOwner)
		}
		t.Logf("%s: created %s, gate set by the app %s later, Ready %s later",
			p.Name, p.CreationTimestamp.Format(time.TimeOnly),
			g.LastTransitionTime.Sub(p.CreationTimestamp.Time), ready.LastTransitionTime.Sub(p.CreationTimestamp.Time))
	}
}

// gateWithoutRBAC: a pod whose service account may not patch its status
// passes every probe yet never turns Ready; the app logs what is missing,
// and sets the gate as soon as the permission is back.
func (s *suite) gateWithoutRBAC(t *testing.T) {
	before := s.waitReady(t, time.Minute)
	s.k.must(t, "delete", "rolebinding", "payservice-readiness-gate")
	s.k.must(t, "delete", "pod", before[0].Name, "--wait=false")
	fresh := s.newPod(t, before)

	eventually(t, 2*time.Minute, time.Second, fresh+" containers ready", func() (bool, string) {
		p, _ := s.k.pod(fresh)
		c, _ := condition(p, corev1.ContainersReady)
		return c.Status == corev1.ConditionTrue, fmt.Sprintf("ContainersReady=%s", c.Status)
	})
	logs := ""
	eventually(t, 30*time.Second, time.Second, fresh+" logs the missing permission", func() (bool, string) {
		logs, _ = s.k.run("logs", fresh)
		return strings.Contains(logs, "pods/status"), "no log line mentions pods/status"
	})
	p, _ := s.k.pod(fresh)
	if ready, _ := condition(p, corev1.PodReady); ready.Status == corev1.ConditionTrue {
		t.Fatalf("%s is Ready although the app could not set its gate", fresh)
	}
	ready, _ := condition(p, corev1.PodReady)
	t.Logf("%s: containers ready, pod not Ready (%s); the app logs: %s", fresh, ready.Reason, firstLine(logs, "pods/status"))

	s.k.must(t, "apply", "-k", kustomization(t, s.images(t))) // the RoleBinding is back
	s.waitReady(t, time.Minute)
	p, _ = s.k.pod(fresh)
	if g, _ := condition(p, gate); g.Status != corev1.ConditionTrue {
		t.Errorf("%s: gate %s, want True once the RoleBinding is back", fresh, g.Status)
	}
}

// images returns the images the running Deployments use, by manifest name,
// so that re-applying the overlay changes nothing else.
func (s *suite) images(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for name, deployment := range map[string]string{"payservice": "payservice", "payservice-fakeprovider": "fakeprovider", "postgres": "postgres", "redis": "redis"} {
		out := s.k.must(t, "get", "deployment", deployment, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
		m[name] = out
	}
	return m
}

// serving says whether ip is a ready endpoint of the payservice Service.
func (s *suite) serving(t *testing.T, ip string) bool {
	var list discoveryv1.EndpointSliceList
	if err := s.k.get(&list, "endpointslices", "-l", "kubernetes.io/service-name=payservice"); err != nil {
		t.Error(err)
		return false
	}
	for _, sl := range list.Items {
		for _, e := range sl.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready && slices.Contains(e.Addresses, ip) {
				return true
			}
		}
	}
	return false
}

// newPod waits for an app pod that is not among before, and names it.
func (s *suite) newPod(t *testing.T, before []corev1.Pod) string {
	t.Helper()
	var name string
	eventually(t, time.Minute, 500*time.Millisecond, "a replacement pod", func() (bool, string) {
		for _, p := range s.k.pods(t, appSelector) {
			if !slices.ContainsFunc(before, func(b corev1.Pod) bool { return b.Name == p.Name }) {
				name = p.Name
				return true, ""
			}
		}
		return false, "none yet"
	})
	return name
}

// postgresDown freezes Postgres (SIGSTOP: every query hangs, the harder
// case for a client than a refused connection) for longer than liveness
// would take to restart a pod that failed it. Every pod must leave the
// Service, none may restart, and a pod started meanwhile must not turn
// Ready before its migrations have run.
func (s *suite) postgresDown(t *testing.T) {
	before := s.waitReady(t, time.Minute)
	restartsBefore := restarts(before)
	freeze(t, s.k, "deployment/postgres")
	frozen := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			unfreeze(t, s.k, "deployment/postgres")
			thawed = true
		}
	}
	defer thaw()

	eventually(t, 30*time.Second, 500*time.Millisecond, "every pod NotReady", func() (bool, string) {
		var ready []string
		for _, p := range s.k.pods(t, appSelector) {
			if isReady(p) {
				ready = append(ready, p.Name)
			}
		}
		return len(ready) == 0, "still Ready: " + strings.Join(ready, ", ")
	})
	t.Logf("every pod NotReady %v after Postgres froze", time.Since(frozen).Round(100*time.Millisecond))

	s.k.must(t, "delete", "pod", before[0].Name, "--wait=false")
	fresh := s.newPod(t, before)
	// Three liveness periods and more: a probe that checked Postgres
	// would have restarted the pods by now.
	for time.Since(frozen) < 40*time.Second {
		if p, ok := s.k.pod(fresh); ok && isReady(p) {
			t.Fatalf("%s turned Ready while Postgres was down: before its migrations ran", fresh)
		}
		time.Sleep(time.Second)
	}
	for _, p := range s.k.pods(t, appSelector) {
		if n, ok := restartsBefore[p.Name]; ok && restarts([]corev1.Pod{p})[p.Name] != n {
			t.Errorf("%s restarted while Postgres was down (restarts %d → %d): liveness must not depend on Postgres",
				p.Name, n, restarts([]corev1.Pod{p})[p.Name])
		}
	}
	thaw()
	start := time.Now()
	pods := s.waitReady(t, 2*time.Minute)
	t.Logf("Postgres back: %d pods Ready again within %v, none restarted", len(pods), time.Since(start).Round(100*time.Millisecond))
	logs := s.k.must(t, "logs", fresh)
	if !strings.Contains(logs, "ready: schema is current") {
		t.Errorf("%s is Ready but never logged that its schema is current", fresh)
	}
	for _, p := range pods {
		if n := restarts([]corev1.Pod{p})[p.Name]; n != 0 {
			// Why the container before this one ended: the evidence a
			// restart leaves, gone once the namespace is.
			previous, _ := s.k.run("logs", p.Name, "--previous", "--tail=40")
			last, _ := s.k.run("get", "pod", p.Name, "-o", "jsonpath={.status.containerStatuses[0].lastState}")
			t.Errorf("%s has restarted %d times; its previous container ended %s; its last lines:\n%s", p.Name, n, last, previous)
		}
	}
}

// redisDown freezes Redis: the idempotency cache is optional, so every
// pod stays Ready (reporting itself degraded) and none restarts.
func (s *suite) redisDown(t *testing.T) {
	before := s.waitReady(t, time.Minute)
	freeze(t, s.k, "deployment/redis")
	defer unfreeze(t, s.k, "deployment/redis")
	var degraded string
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		for _, p := range s.k.pods(t, appSelector) {
			if !isReady(p) {
				t.Fatalf("%s NotReady while only Redis is down: Redis must be optional for readiness", p.Name)
			}
		}
		body, _ := s.k.run("get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:8080/proxy/health/ready", namespace, before[1].Name))
		if strings.Contains(body, "degraded") {
			degraded = strings.TrimSpace(body)
		}
	}
	if degraded == "" {
		t.Errorf("no pod reported itself degraded while Redis was down")
	}
	t.Logf("Redis frozen 15 s: every pod stayed Ready; %s answered %s", before[1].Name, degraded)
	for name, n := range restarts(s.k.pods(t, appSelector)) {
		if n != restarts(before)[name] {
			t.Errorf("%s restarted while Redis was down", name)
		}
	}
}

// freeze stops every process of the target's pod (SIGSTOP) but the shell
// that sends it and the pod's PID 1: the server keeps its connections and
// answers nothing. The dependencies share their pod's process namespace,
// so PID 1 is the pause container, not the server: a namespace's init
// ignores SIGSTOP sent from inside it. unfreeze resumes them.
func freeze(t *testing.T, k *kube, target string) {
	t.Helper()
	k.must(t, "exec", target, "--", "sh", "-c", "kill -STOP -1")
}

func unfreeze(t *testing.T, k *kube, target string) {
	t.Helper()
	k.must(t, "exec", target, "--", "sh", "-c", "kill -CONT -1")
}

// rollingUpdate changes the image tag under load: maxSurge 1 and
// maxUnavailable 0 replace one pod at a time, and the drain (readiness 503
// at SIGTERM, SHUTDOWN_DRAIN_DELAY, the grace period) must hide each
// replacement from every client.
func (s *suite) rollingUpdate(t *testing.T) {
	s.waitReady(t, time.Minute)
	var took time.Duration
	r := s.underLoad(t, func() {
		start := time.Now()
		s.k.must(t, "set", "image", "deployment/payservice", "payservice=payservice:"+tagAfter)
		s.k.must(t, "rollout", "status", "deployment/payservice", "--timeout=5m")
		took = time.Since(start)
	})
	t.Logf("rolling update of %d pods under %d payments/s took %v: %d requests, %d failed", replicas, rate, took.Round(time.Second), r.Attempts, r.FailedAttempts)
	if r.FailedAttempts != 0 || r.GivenUp != 0 {
		t.Errorf("the rolling update failed %d requests (%d payments never acknowledged); want none", r.FailedAttempts, r.GivenUp)
	}
	for _, p := range s.waitReady(t, time.Minute) {
		if img := p.Spec.Containers[0].Image; !strings.HasSuffix(img, ":"+tagAfter) {
			t.Errorf("%s runs %s after the rollout", p.Name, img)
		}
	}
}

// drain drains the node holding the most pods, under load: the eviction
// API lets the PodDisruptionBudget (maxUnavailable 1) stop all but one
// eviction while the evicted pod's replacement is not Ready, and traffic
// flows throughout.
func (s *suite) drain(t *testing.T) {
	pods := s.waitReady(t, time.Minute)
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	node := ""
	for n, c := range perNode {
		if node == "" || c > perNode[node] {
			node = n
		}
	}
	var out string
	var drainErr error
	r := s.underLoad(t, func() {
		// Only payservice's pods: the drain is about its budget, and
		// evicting the test's own Postgres would prove nothing.
		out, drainErr = s.k.run("drain", node, "--pod-selector="+appSelector, "--ignore-daemonsets",
			"--delete-emptydir-data", "--timeout=30s")
	})
	s.k.must(t, "uncordon", node)
	evicted := map[string]bool{}
	refusals := 0
	for _, line := range strings.Split(out, "\n") {
		if name, ok := strings.CutPrefix(line, "pod/"); ok && strings.HasSuffix(name, " evicted") {
			evicted[strings.TrimSuffix(name, " evicted")] = true
		}
		if strings.Contains(line, "Cannot evict pod as it would violate the pod's disruption budget") {
			refusals++
		}
	}
	refused := refusals > 0
	t.Logf("kubectl drain %s, %d of the pods on it, under load: evicted %v; %d evictions refused by the PodDisruptionBudget; drain failed: %v. Its output:\n%s",
		node, perNode[node], slices.Sorted(mapKeys(evicted)), refusals, drainErr != nil, out)
	if perNode[node] > 1 {
		if drainErr == nil || !refused || len(evicted) != 1 {
			t.Errorf("the drain of %d pods should evict exactly one and be refused the rest by the PDB; output:\n%s", perNode[node], out)
		}
	} else if drainErr != nil || len(evicted) != 1 {
		t.Errorf("the drain of a node with one pod should evict it; output:\n%s", out)
	}
	if r.FailedAttempts != 0 || r.GivenUp != 0 {
		t.Errorf("the drain failed %d requests; want none", r.FailedAttempts)
	}
	s.waitReady(t, 2*time.Minute)
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// gracefulDeletion deletes a pod under load: no request fails, and the app
// sets its gate False as it starts draining, before the pod is gone.
func (s *suite) gracefulDeletion(t *testing.T) {
	pods := s.waitReady(t, time.Minute)
	victim, ip := pods[0].Name, pods[0].Status.PodIP
	var withdrawn, outOfService time.Duration
	r := s.underLoad(t, func() {
		start := time.Now()
		s.k.must(t, "delete", "pod", victim, "--wait=false")
		for {
			p, ok := s.k.pod(victim)
			if !ok {
				break
			}
			if g, _ := condition(p, gate); g.Status == corev1.ConditionFalse && withdrawn == 0 {
				withdrawn = time.Since(start)
			}
			if outOfService == 0 && !s.serving(t, ip) {
				outOfService = time.Since(start)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// The drain's timeline, as a real kubelet, endpoint controller
		// and kube-proxy played it; SHUTDOWN_DRAIN_DELAY (10 s) bounds
		// how late the first two may come.
		t.Logf("%s: out of the Service's ready endpoints %v after the delete, gate False %v after, pod gone %v after",
			victim, outOfService.Round(100*time.Millisecond), withdrawn.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
		s.waitReady(t, 2*time.Minute)
	})
	if withdrawn == 0 {
		t.Errorf("%s never set its gate False while terminating", victim)
	}
	if outOfService == 0 {
		t.Errorf("%s stayed a ready endpoint of the Service until it was gone", victim)
	}
	if r.FailedAttempts != 0 || r.GivenUp != 0 {
		t.Errorf("a graceful deletion failed %d requests; want none", r.FailedAttempts)
	}
}

// forcedDeletion kills a pod with no grace: requests in flight on it fail,
// and the clients' retries with their keys, the idempotency records and
// the reconciler must still leave every payment acknowledged once. The
// final audit checks the money.
func (s *suite) forcedDeletion(t *testing.T) {
	pods := s.waitReady(t, time.Minute)
	r := s.underLoad(t, func() {
		s.k.must(t, "delete", "pod", pods[0].Name, "--grace-period=0", "--force")
		s.waitReady(t, 2*time.Minute)
	})
	if r.GivenUp != 0 {
		t.Errorf("%d payments were never acknowledged, although their clients retried for %v", r.GivenUp, time.Minute)
	}
	t.Logf("forced deletion: %d requests failed and were retried; every payment acknowledged", r.FailedAttempts)
}

// hpa: the HorizontalPodAutoscaler is accepted and reads CPU from
// metrics-server.
func (s *suite) hpa(t *testing.T) {
	var h autoscalingv2.HorizontalPodAutoscaler
	eventually(t, 3*time.Minute, 5*time.Second, "the HPA reports CPU utilization", func() (bool, string) {
		if err := s.k.get(&h, "hpa", "payservice"); err != nil {
			return false, err.Error()
		}
		for _, m := range h.Status.CurrentMetrics {
			if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU && m.Resource.Current.AverageUtilization != nil {
				return true, ""
			}
		}
		return false, fmt.Sprintf("current metrics %+v, conditions %+v (is metrics-server running?)", h.Status.CurrentMetrics, h.Status.Conditions)
	})
	for _, m := range h.Status.CurrentMetrics {
		if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
			t.Logf("HPA: cpu %d%% of requests against a target of %d%%, %d replicas",
				*m.Resource.Current.AverageUtilization, *h.Spec.Metrics[0].Resource.Target.AverageUtilization, h.Status.CurrentReplicas)
		}
	}
}

// scheduling: anti-affinity and topology spread are preferences, so the
// pods schedule even on one node; with more nodes they spread.
func (s *suite) scheduling(t *testing.T) {
	pods := s.waitReady(t, time.Minute)
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	n := len(nodes(t, s.k))
	t.Logf("%d pods on %d node(s): %v", len(pods), n, perNode)
	if n > 1 {
		lo, hi := len(pods), 0
		for _, c := range perNode {
			lo, hi = min(lo, c), max(hi, c)
		}
		if len(perNode) < min(n, len(pods)) || hi-lo > 1 {
			t.Errorf("pods are not spread across the %d nodes: %v", n, perNode)
		}
	}
}

// audit checks the money after every disruption: each acknowledged payment
// is in Postgres as answered, the provider charged each key at most once,
// and the ledger and Postgres agree.
func (s *suite) audit(t *testing.T) {
	if len(s.acked) == 0 {
		t.Fatal("no payment was acknowledged: nothing to audit")
	}
	db, err := sql.Open("postgres", "postgres://payservice:payservice@"+s.k.portForward(t, "svc/postgres", 5432)+"/payservice?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if left, err := paymentsaudit.WaitSettled(ctx, db); err != nil || left != 0 {
		t.Fatalf("payments still processing after 2 minutes: %d (%v)", left, err)
	}
	var ledger struct {
		Data []fakeprovider.Charge `json:"data"`
	}
	resp, err := http.Get("http://" + s.k.portForward(t, "svc/fakeprovider", 8081) + "/v1/charges")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&ledger); err != nil {
		t.Fatal(err)
	}
	f, err := paymentsaudit.Audit(ctx, db, ledger.Data, nil, paymentsaudit.Acknowledged{Payments: s.acked})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("audit: %d payments acknowledged across the disruptions; Postgres has %d (%d succeeded, %d failed); the provider %d charges",
		len(s.acked), f.Payments, f.Succeeded, f.Failed, f.Charges)
	for _, p := range f.Problems() {
		t.Error(p)
	}
}

func firstLine(text, containing string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, containing) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
