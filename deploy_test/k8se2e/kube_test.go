//go:build k8se2e

package k8se2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// kube runs kubectl against KUBECONFIG's cluster, in the suite's namespace.
// Methods that fail the test take the test (or subtest) they fail.
type kube struct {
	kubectl string
	ns      string
}

// run runs kubectl and returns its combined output.
func (k *kube) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.kubectl, append([]string{"-n", k.ns}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// must runs kubectl and fails the test if it fails.
func (k *kube) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// get decodes `kubectl get ... -o json` into v.
func (k *kube) get(v any, args ...string) error {
	cmd := exec.Command(k.kubectl, append([]string{"-n", k.ns, "get", "-o", "json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl get %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return json.Unmarshal(out, v)
}

// pods lists the pods matching the label selector.
func (k *kube) pods(t *testing.T, selector string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	if err := k.get(&list, "pods", "-l", selector); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// pod fetches one pod by name; ok is false once it is gone.
func (k *kube) pod(name string) (corev1.Pod, bool) {
	var p corev1.Pod
	if err := k.get(&p, "pod", name); err != nil {
		return p, false
	}
	return p, true
}

// eventually polls cond every interval until it holds or timeout passes,
// then fails with cond's last explanation.
func eventually(t *testing.T, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, timeout, why)
		}
		time.Sleep(interval)
	}
}

// condition returns the pod's condition of type c.
func condition(p corev1.Pod, c corev1.PodConditionType) (corev1.PodCondition, bool) {
	for _, x := range p.Status.Conditions {
		if x.Type == c {
			return x, true
		}
	}
	return corev1.PodCondition{}, false
}

func isReady(p corev1.Pod) bool {
	c, ok := condition(p, corev1.PodReady)
	return ok && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil
}

// restarts sums the restart counts of the pods' containers, by pod name.
func restarts(pods []corev1.Pod) map[string]int32 {
	m := map[string]int32{}
	for _, p := range pods {
		for _, c := range p.Status.ContainerStatuses {
			m[p.Name] += c.RestartCount
		}
	}
	return m
}

// portForward forwards a free local port to the target's port (pod/NAME
// or svc/NAME) until the test ends, and returns the local address.
func (k *kube) portForward(t *testing.T, target string, port int) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, k.kubectl, "-n", k.ns, "port-forward", "--address=127.0.0.1", target, fmt.Sprintf(":%d", port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	addr := make(chan string, 1)
	go func() { // owned by the cleanup above, which waits for it
		defer close(done)
		re := regexp.MustCompile(`Forwarding from (127\.0\.0\.1:\d+)`)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if m := re.FindStringSubmatch(s.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait() // ends when cancel kills it
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl port-forward %s %d: no local port within 30s: %s", target, port, stderr.String())
		return ""
	}
}

// environment reads a required variable, failing with why it is needed.
func environment(t *testing.T, name, why string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: %s (see make k8s-e2e in the README's Kubernetes section)", name, why)
	}
	return v
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// docker runs a docker command and fails the test if it fails.
func docker(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
