package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// app is one instance of the server binary, run as a process of its own so
// that it can be killed for real.
type app struct {
	name string
	bin  string
	dir  string
	log  *slog.Logger

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	api     string        // http://127.0.0.1:port
	admin   string
	started int // how many times it was started, for its log file's name
}

// start runs the binary with env on fresh loopback ports and waits until
// its readiness says ready.
func (a *app) start(ctx context.Context, env map[string]string) error {
	apiPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	adminPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.started++
	logPath := filepath.Join(a.dir, fmt.Sprintf("server-%s-%d.log", a.name, a.started))
	a.mu.Unlock()
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor

	cmd := exec.Command(a.bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range sortedKeys(env) {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	cmd.Env = append(cmd.Env,
		fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", apiPort), fmt.Sprintf("ADMIN_ADDR=127.0.0.1:%d", adminPort))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start instance %s: %w", a.name, err)
	}
	exited := make(chan struct{})
	go func() { // owned by the process: ends when it exits
		_ = cmd.Wait()
		close(exited)
	}()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.api = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	a.admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	a.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, _ := a.readiness(ctx); st == ready || st == degraded {
			a.log.Info("instance ready", "instance", a.name, "api", a.api, "log", logPath)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("instance %s exited while starting; see %s", a.name, logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instance %s not ready within 30s; see %s", a.name, logPath)
		}
	}
}

// stop ends the process, if running: SIGKILL when kill, else SIGTERM and a
// wait for its drain and shutdown.
func (a *app) stop(ctx context.Context, kill bool) error {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	defer func() { // gone: it no longer counts as running
		a.mu.Lock()
		if a.cmd == cmd {
			a.cmd = nil
		}
		a.mu.Unlock()
	}()
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal instance %s: %w", a.name, err)
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("instance %s did not exit after %v: killed", a.name, sig)
	}
}

// running reports whether the process is up (draining included), and its
// addresses.
func (a *app) running() (api, admin string, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return "", "", false
	}
	select {
	case <-a.exited:
		return "", "", false
	default:
		return a.api, a.admin, true
	}
}

// address is the API address of the instance's latest process, running
// or not; empty before its first start.
func (a *app) address() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.api
}

// Readiness states, as the balancer and the timeline see them.
type readiness int

const (
	down     readiness = iota // no answer
	notReady                  // 503
	ready
	degraded // ready, with an optional dependency down
)

func (r readiness) String() string {
	switch r {
	case notReady:
		return "not ready"
	case ready:
		return "ready"
	case degraded:
		return "ready, degraded"
	default:
		return "down"
	}
}

// readiness asks the instance's readiness endpoint.
func (a *app) readiness(ctx context.Context) (readiness, error) {
	api, _, ok := a.running()
	if !ok {
		return down, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/health/ready", nil)
	if err != nil {
		return down, err
	}
	probe := http.Client{Timeout: 500 * time.Millisecond}
	resp, err := probe.Do(req)
	if err != nil {
		return down, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return notReady, nil
	}
	var body struct {
		Checks map[string]string `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return ready, nil
	}
	for _, v := range body.Checks {
		if v != "ok" {
			return degraded, nil
		}
	}
	return ready, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
