package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/fakeprovider"
)

// TestShutdown_SIGTERMUnderLoadLosesNoRequest sends SIGTERM to the real
// binary at a random moment under concurrent load, and checks DESIGN §5:
// readiness turns 503 at once while liveness stays 200, requests keep
// being served through the drain delay, every request the server accepted
// completes, and the process exits 0 within drain + timeout.
func TestShutdown_SIGTERMUnderLoadLosesNoRequest(t *testing.T) {
	const drain, timeout = time.Second, 5 * time.Second
	bin := buildServer(t)
	st := newStack(t, map[string]string{
		"SHUTDOWN_DRAIN_DELAY": drain.String(),
		"SHUTDOWN_TIMEOUT":     timeout.String(),
	})
	p := startProcess(t, bin, st.env)
	waitReady(t, p.api)
	st.faults(t, fakeprovider.Faults{LatencyMS: 300}) // so requests are in flight at every moment

	var (
		stop                       atomic.Bool
		signalled                  atomic.Int64 // unix nanos of the SIGTERM
		ok, okAfterSignal, refused atomic.Int64
		failMu                     sync.Mutex
		failures                   []string
	)
	var load sync.WaitGroup
	for w := range 8 {
		load.Go(func() {
			client := &http.Client{Transport: &http.Transport{}} // its own connections
			defer client.CloseIdleConnections()
			for i := 0; !stop.Load(); i++ {
				sentAt := time.Now().UnixNano()
				req, _ := http.NewRequest(http.MethodPost, p.api+"/v1/payments", strings.NewReader(body1000))
				req.Header.Set("Authorization", "Bearer key_a")
				req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%d-%d", w, i))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				switch {
				case err != nil && errors.Is(err, syscall.ECONNREFUSED):
					// The listener is closed: never accepted, not in flight.
					// A load balancer stopped sending during the drain.
					refused.Add(1)
					return
				case err != nil:
					failMu.Lock()
					failures = append(failures, err.Error())
					failMu.Unlock()
				case resp.StatusCode != http.StatusCreated:
					failMu.Lock()
					failures = append(failures, resp.Status)
					failMu.Unlock()
					resp.Body.Close()
				default:
					resp.Body.Close()
					ok.Add(1)
					if s := signalled.Load(); s != 0 && sentAt > s {
						okAfterSignal.Add(1)
					}
				}
			}
		})
	}

	time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond) // a random moment
	signalledAt := time.Now()
	signalled.Store(signalledAt.UnixNano())
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if status, _ := readiness(t, p.api); status != 503 {
		t.Errorf("readiness %dms after SIGTERM: %d, want 503", 100, status)
	}
	if r := call(t, http.MethodGet, p.api+"/health/live", "", "", ""); r.status != 200 {
		t.Errorf("liveness during the drain: %d, want 200", r.status)
	}

	took := p.wait(t, drain+timeout+5*time.Second)
	stop.Store(true)
	load.Wait()

	t.Logf("SIGTERM after %d requests served; exit %d after %s; %d served after the signal (during the drain), %d refused once closed",
		ok.Load()-okAfterSignal.Load(), p.exitCode(), took.Round(time.Millisecond), okAfterSignal.Load(), refused.Load())
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if took < drain || took > drain+timeout {
		t.Errorf("exited %s after SIGTERM, want between the drain (%s) and drain + timeout (%s)", took, drain, drain+timeout)
	}
	if len(failures) > 0 {
		t.Errorf("%d requests failed in flight: %v", len(failures), failures[:min(5, len(failures))])
	}
	if okAfterSignal.Load() == 0 {
		t.Error("no request sent after SIGTERM was served: the drain did not keep serving")
	}
	if n := len(st.fake.Charges()); int64(n) != ok.Load() {
		t.Errorf("%d charges for %d payments answered 201", n, ok.Load())
	}
}

// TestShutdown_SecondSignalExitsAtOnce: an operator's second Ctrl-C does
// not wait out the drain.
func TestShutdown_SecondSignalExitsAtOnce(t *testing.T) {
	bin := buildServer(t)
	st := newStack(t, map[string]string{"SHUTDOWN_DRAIN_DELAY": "30s"})
	p := startProcess(t, bin, st.env)
	waitReady(t, p.api)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.logs.waitFor(t, "the shutdown to start", func(l map[string]any) bool {
		return strings.HasPrefix(fmt.Sprint(l["msg"]), "shutdown signal received")
	})
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if took := p.wait(t, 5*time.Second); took > time.Second {
		t.Errorf("the second signal took %s to end the process, want at once", took)
	}
	t.Logf("second signal: exited %s later, exit code %d", time.Since(start).Round(time.Millisecond), p.exitCode())
	if p.exitCode() == 0 {
		t.Error("exit code 0 after a forced exit: it should say it was killed")
	}
}
