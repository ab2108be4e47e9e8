package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// These helpers run the real server binary as a child process, for tests
// that need real signals: a crash (SIGKILL), a graceful shutdown (SIGTERM).

// buildServer compiles this package into a temporary directory.
func buildServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "server")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is a running server binary.
type process struct {
	cmd        *exec.Cmd
	logs       *testenv.Logs
	api, admin string
	exited     chan struct{}
	waitErr    error     // valid once exited is closed
	exitedAt   time.Time // valid once exited is closed
}

// startProcess starts bin with exactly env (plus loopback addresses on
// free ports) and waits until both of its servers listen.
func startProcess(t *testing.T, bin string, env map[string]string) *process {
	t.Helper()
	full := map[string]string{"HTTP_ADDR": "127.0.0.1:0", "ADMIN_ADDR": "127.0.0.1:0"}
	for k, v := range env {
		full[k] = v
	}
	p := &process{cmd: exec.Command(bin), logs: &testenv.Logs{}, exited: make(chan struct{})}
	for k, v := range full {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // ends when the process does; the cleanup makes sure it does
		p.waitErr = p.cmd.Wait()
		p.exitedAt = time.Now() // here, not in wait: tests time the exit from their signal
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			t.Logf("server logs:\n%s", p.logs.String())
		}
	})
	addr := func(name string) string {
		l := p.logs.WaitFor(t, "listening "+name, func(l map[string]any) bool { return l["msg"] == "listening" && l["server"] == name })
		return "http://" + l["addr"].(string)
	}
	p.api, p.admin = addr("api"), addr("admin")
	return p
}

// kill sends SIGKILL — a crash: no shutdown code runs — and waits.
func (p *process) kill(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(t, 10*time.Second)
}

// signal sends sig to the process and returns when it did.
func (p *process) signal(t *testing.T, sig os.Signal) time.Time {
	t.Helper()
	sent := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	return sent
}

// wait waits up to limit for the process to exit, and returns when it did.
func (p *process) wait(t *testing.T, limit time.Duration) (exitedAt time.Time) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("the server did not exit within %s", limit)
	}
	return p.exitedAt
}

// exitCode is the process's exit code, or -1 if a signal killed it.
func (p *process) exitCode() int { return p.cmd.ProcessState.ExitCode() }
