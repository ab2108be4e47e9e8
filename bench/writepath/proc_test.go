package writepath

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// buildBinaries builds the bare handler, and payservice's server unless
// server names one, into dir.
func buildBinaries(ctx context.Context, dir, server string) (serverBin, bareBin string, err error) {
	serverBin, bareBin = server, filepath.Join(dir, "bare")
	if serverBin == "" {
		// The service's module root, wherever bench/ is: bench's go.mod
		// replaces the service's module with it.
		root, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/resiliencekit/payservice").Output()
		if err != nil {
			return "", "", fmt.Errorf("find the service's source: %w", err)
		}
		serverBin = filepath.Join(dir, "server")
		build := exec.CommandContext(ctx, "go", "build", "-o", serverBin, "./cmd/server")
		build.Dir = strings.TrimSpace(string(root))
		if out, err := build.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build the server: %w\n%s", err, out)
		}
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", bareBin, "github.com/resiliencekit/payservice/bench/cmd/bare")
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build the bare handler: %w\n%s", err, out)
	}
	return serverBin, bareBin, nil
}

// storage returns two new, empty databases (the service's and the bare
// handler's) on one Postgres server, a Redis URL for the service, and
// where they come from: DATABASE_URL and REDIS_URL when both are set,
// else testenv's containers.
func storage(t *testing.T) (serviceDB, bareDB, redisURL, source string) {
	t.Helper()
	adminURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if adminURL == "" || redisURL == "" {
		// No streams: empty databases. The server migrates its own on
		// start; the bare handler creates its table.
		return testenv.NewDatabase(t), testenv.NewDatabase(t), testenv.RedisURL(t), "testcontainers (internal/platform/testenv)"
	}
	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		t.Fatalf("DATABASE_URL: %v", err)
	}
	t.Cleanup(func() { admin.Close() })
	newDB := func(name string) string {
		name = fmt.Sprintf("writepath_%s_%d", name, time.Now().UnixNano())
		if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
			t.Fatalf("create database: %v", err)
		}
		t.Cleanup(func() {
			if _, err := admin.Exec("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
				t.Logf("drop database %s: %v", name, err)
			}
		})
		u, err := url.Parse(adminURL)
		if err != nil {
			t.Fatalf("DATABASE_URL: %v", err)
		}
		u.Path = "/" + name
		return u.String()
	}
	return newDB("service"), newDB("bare"), redisURL, "DATABASE_URL and REDIS_URL"
}

// checkVariables checks that the server knows every variable of env: it
// lists those it reads under "Environment:" in `server -h`.
func checkVariables(ctx context.Context, bin string, env []string) error {
	out, err := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -h: %w\n%s", bin, err, out)
	}
	_, vars, ok := strings.Cut(string(out), "Environment:")
	if !ok {
		return fmt.Errorf("%s -h lists no Environment: cannot check the variables the benchmark sets\n%s", bin, out)
	}
	known := map[string]bool{}
	for _, line := range strings.Split(vars, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			known[f[0]] = true
		}
	}
	var unknown []string
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); !known[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("the server no longer reads %s (see %s -h): the benchmark would measure its defaults instead", strings.Join(unknown, ", "), bin)
	}
	return nil
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// process is a server started by start.
type process struct {
	name    string
	cmd     *exec.Cmd
	exited  chan error
	log     *os.File
	logPath string

	stopOnce sync.Once
	stopErr  error
}

// start runs bin with exactly env (nothing inherited), its output in
// logPath, and waits until readyURL answers 200.
func start(ctx context.Context, name, bin string, env []string, logPath, readyURL string) (*process, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	p := &process{name: name, cmd: cmd, exited: make(chan error, 1), log: log, logPath: logPath}
	go func() { p.exited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	probe := &http.Client{Timeout: time.Second}
	for {
		if resp, err := probe.Get(readyURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case err := <-p.exited:
			log.Close()
			return nil, fmt.Errorf("%s exited before ready (%w); its log ends:\n%s", name, err, logTail(logPath))
		case <-deadline:
			_ = p.stop()
			return nil, fmt.Errorf("%s not ready after 60s; its log ends:\n%s", name, logTail(logPath))
		case <-ctx.Done():
			_ = p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for the exit; after 30s it kills the
// process. Calls after the first return the first's result.
func (p *process) stop() error {
	p.stopOnce.Do(func() {
		defer p.log.Close()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case p.stopErr = <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			p.stopErr = fmt.Errorf("no exit 30s after SIGTERM; killed: %w", <-p.exited)
		}
	})
	return p.stopErr
}

// cpuTime returns the CPU time (user and system, all threads) the process
// has used so far, from /proc: Linux only. ok is false where it cannot be
// read.
func (p *process) cpuTime() (d time.Duration, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. utime and stime are the 14th and
	// 15th fields, the 12th and 13th after it, in clock ticks: USER_HZ,
	// which is 100 on Linux whatever the kernel's own tick rate.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * (time.Second / 100), true
}

// logTail returns the last lines of a server's log.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}

// cpuProfile fetches a CPU profile of d (whole seconds, at least one) from
// the service's admin endpoint into path; the channel reports when done.
func cpuProfile(ctx context.Context, adminURL string, d time.Duration, path string) <-chan error {
	done := make(chan error, 1)
	seconds := max(1, int(d/time.Second))
	go func() {
		done <- func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", adminURL, seconds), nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("CPU profile: %w", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("CPU profile: %s", resp.Status)
			}
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, resp.Body); err != nil {
				f.Close()
				return fmt.Errorf("CPU profile: %w", err)
			}
			return f.Close()
		}()
	}()
	return done
}
