package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// refused is the error a dial to a closed port gives, address included.
var refused = &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5432}, Err: errors.New("connect: connection refused")}

func probe(err error) func(context.Context) error {
	return func(context.Context) error { return err }
}

func TestHealthReady_ReportsEveryCheck(t *testing.T) {
	tests := []struct {
		name       string
		migrated   bool
		shutdown   bool
		postgres   error
		redis      error
		wantStatus int
		wantChecks map[string]string
	}{
		{"all well", true, false, nil, nil, 200,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "ok"}},
		{"migrations pending", false, false, nil, nil, 503,
			map[string]string{"migrations": "pending", "postgres": "ok", "redis": "ok"}},
		{"postgres down", true, false, refused, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: unreachable", "redis": "ok"}},
		{"redis down: degraded, still ready", true, false, nil, refused, 200,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "degraded: unreachable"}},
		{"postgres slow", true, false, context.DeadlineExceeded, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: timeout", "redis": "ok"}},
		{"postgres failing otherwise", true, false, errors.New("pq: the database system is starting up"), nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: failing", "redis": "ok"}},
		{"shutting down", true, true, nil, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(time.Second, slog.New(slog.DiscardHandler),
				Check{Name: "postgres", Probe: probe(tt.postgres)},
				Check{Name: "redis", Optional: true, Probe: probe(tt.redis)})
			if tt.migrated {
				h.SetMigrated()
			}
			if tt.shutdown {
				h.SetShuttingDown()
			}
			rec := httptest.NewRecorder()
			h.Ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))

			var body healthBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			wantStatus := map[int]string{200: "ok", 503: "unavailable"}[tt.wantStatus]
			if rec.Code != tt.wantStatus || body.Status != wantStatus {
				t.Errorf("%d %q, want %d %q", rec.Code, body.Status, tt.wantStatus, wantStatus)
			}
			for name, want := range tt.wantChecks {
				if body.Checks[name] != want {
					t.Errorf("checks[%s] = %q, want %q", name, body.Checks[name], want)
				}
			}
			if tt.shutdown && body.Reason != "shutting down" {
				t.Errorf("reason %q, want shutting down", body.Reason)
			}
		})
	}
}

func TestHealthReady_KeepsErrorDetailsInTheLogOncePerChange(t *testing.T) {
	var logs bytes.Buffer
	var pgErr error = refused
	h := New(time.Second, slog.New(slog.NewJSONHandler(&logs, nil)),
		Check{Name: "postgres", Probe: func(context.Context) error { return pgErr }})
	h.SetMigrated()
	// Each probe comes after the last one's result has gone stale, so each
	// runs the check.
	now := time.Unix(0, 0)
	h.now = func() time.Time { now = now.Add(checkFreshness); return now }
	ready := func() string {
		rec := httptest.NewRecorder()
		h.Ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
		return rec.Body.String()
	}

	for range 3 {
		if body := ready(); strings.Contains(body, "10.1.2.3") {
			t.Fatalf("the public body shows the dependency's address: %s", body)
		}
	}
	if n := strings.Count(logs.String(), "readiness check failing"); n != 1 || !strings.Contains(logs.String(), "10.1.2.3:5432") {
		t.Errorf("want one log line with the error's details for three failing probes, got %d:\n%s", n, logs.String())
	}
	pgErr = nil
	ready()
	ready()
	if n := strings.Count(logs.String(), "readiness check passes again"); n != 1 {
		t.Errorf("want one recovery line, got %d:\n%s", n, logs.String())
	}
}

// The readiness endpoint is public: a flood of probes must not become a
// flood of database round trips. Its result is cached for a second, and
// callers arriving while a probe runs share it.
func TestHealthReady_AThousandConcurrentProbesPingOnce(t *testing.T) {
	var pings atomic.Int64
	release := make(chan struct{})
	h := New(time.Second, slog.New(slog.DiscardHandler), Check{Name: "postgres", Probe: func(context.Context) error {
		if pings.Add(1) == 1 {
			<-release // the first probe is slow: everyone else arrives meanwhile
		}
		return nil
	}})
	h.SetMigrated()
	now := time.Unix(1_000_000, 0)
	var clockMu sync.Mutex
	h.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	const callers = 1000
	joined := make(chan struct{}, callers)
	h.joined = func() { joined <- struct{}{} }

	codes := make(chan int, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			rec := httptest.NewRecorder()
			h.Ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
			codes <- rec.Code
		})
	}
	// Everyone but the first waits for the first's probe.
	timeout := time.After(10 * time.Second)
	for n := 0; n < callers-1; n++ {
		select {
		case <-joined:
		case <-timeout:
			close(release)
			wg.Wait()
			t.Fatalf("only %d of %d callers joined the probe in flight; %d pings", n, callers-1, pings.Load())
		}
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != http.StatusOK {
			t.Fatalf("a caller got %d, want 200", code)
		}
	}
	if n := pings.Load(); n != 1 {
		t.Fatalf("%d concurrent probes pinged %d times, want 1", callers, n)
	}

	// Fresh for a second: a probe within it pings nothing, one after it
	// pings once more.
	h.Ready(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/health/ready", nil))
	clockMu.Lock()
	now = now.Add(1100 * time.Millisecond)
	clockMu.Unlock()
	h.Ready(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/health/ready", nil))
	if n := pings.Load(); n != 2 {
		t.Errorf("%d pings after one more probe within the second and one after it, want 2", n)
	}
}

// Shutting down turns readiness off at once, cache or not.
func TestHealthReady_ShutdownIsNotCached(t *testing.T) {
	h := New(time.Second, slog.New(slog.DiscardHandler), Check{Name: "postgres", Probe: probe(nil)})
	h.SetMigrated()
	rec := httptest.NewRecorder()
	h.Ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("ready: %d", rec.Code)
	}
	h.SetShuttingDown()
	rec = httptest.NewRecorder()
	h.Ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("shutting down, within the cache's second: %d, want 503", rec.Code)
	}
}

// Details are for the private admin port: ReadyDetailed shows them with
// the same verdict as Ready, and Ready never does, since they may name
// addresses.
func TestHealthReadyDetailed_ShowsDetailsOnlyThere(t *testing.T) {
	for _, pgErr := range []error{nil, refused} {
		h := New(time.Second, slog.New(slog.DiscardHandler),
			Check{Name: "postgres", Probe: probe(pgErr), Detail: func() string { return "writes on 10.1.2.3:5432" }},
			Check{Name: "redis", Optional: true, Probe: probe(nil), Detail: func() string { return "" }})
		h.SetMigrated()
		public, detailed := httptest.NewRecorder(), httptest.NewRecorder()
		h.Ready(public, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
		h.ReadyDetailed(detailed, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
		if public.Code != detailed.Code {
			t.Errorf("postgres %v: Ready %d, ReadyDetailed %d; want the same verdict", pgErr, public.Code, detailed.Code)
		}
		if strings.Contains(public.Body.String(), "10.1.2.3") || strings.Contains(public.Body.String(), "details") {
			t.Errorf("public readiness shows details: %s", public.Body)
		}
		var body healthBody
		if err := json.Unmarshal(detailed.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"postgres": "writes on 10.1.2.3:5432"}; !maps.Equal(body.Details, want) {
			t.Errorf("details = %v, want %v (an empty detail left out)", body.Details, want)
		}
	}
}

// The metrics follow the readiness reports: health_ready is the last
// verdict (0 at once when shutting down), health_ready_changes_total
// counts the verdicts that differ from the one before, and
// health_check_up says how each check, optional or not, last fared.
func TestHealthMetrics_FollowTheReports(t *testing.T) {
	var pgErr, redisErr error
	h := New(time.Second, slog.New(slog.DiscardHandler),
		Check{Name: "postgres", Probe: func(context.Context) error { return pgErr }},
		Check{Name: "redis", Optional: true, Probe: func(context.Context) error { return redisErr }})
	reg := prometheus.NewRegistry()
	if err := h.Register(reg); err != nil {
		t.Fatal(err)
	}
	// Each probe comes after the last round has gone stale: each runs the
	// checks.
	now := time.Unix(0, 0)
	h.now = func() time.Time { now = now.Add(checkFreshness); return now }
	probe := func() { h.Ready(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/health/ready", nil)) }

	steps := []struct {
		name        string
		do          func()
		ready       float64
		changes     float64
		pgUp, rdsUp float64
	}{
		{"before any report", func() {}, 0, 0, 0, 0},
		{"migrations pending: the first report is no change", probe, 0, 0, 1, 1},
		{"migrated", func() { h.SetMigrated(); probe() }, 1, 1, 1, 1},
		{"ready again: no change", probe, 1, 1, 1, 1},
		{"redis down: degraded, still ready", func() { redisErr = refused; probe() }, 1, 1, 1, 0},
		{"postgres down too", func() { pgErr = refused; probe() }, 0, 2, 0, 0},
		{"both back", func() { pgErr, redisErr = nil, nil; probe() }, 1, 3, 1, 1},
		{"shutting down, before any probe", h.SetShuttingDown, 0, 3, 1, 1},
		{"shutting down, reported", probe, 0, 4, 1, 1},
	}
	for _, s := range steps {
		s.do()
		got := []float64{
			metricValue(t, reg, "health_ready", ""), metricValue(t, reg, "health_ready_changes_total", ""),
			metricValue(t, reg, "health_check_up", "postgres"), metricValue(t, reg, "health_check_up", "redis"),
		}
		if want := []float64{s.ready, s.changes, s.pgUp, s.rdsUp}; !slices.Equal(got, want) {
			t.Errorf("%s: ready, changes, postgres up, redis up = %v, want %v", s.name, got, want)
		}
	}
}

// A replica's first report, ready or not, changes nothing: only a flip
// between two reports does.
func TestHealthMetrics_TheFirstReportIsNoChange(t *testing.T) {
	for _, migrated := range []bool{false, true} {
		h := New(time.Second, slog.New(slog.DiscardHandler), Check{Name: "postgres", Probe: probe(nil)})
		reg := prometheus.NewRegistry()
		if err := h.Register(reg); err != nil {
			t.Fatal(err)
		}
		if migrated {
			h.SetMigrated()
		}
		h.Ready(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/health/ready", nil))
		if n := metricValue(t, reg, "health_ready_changes_total", ""); n != 0 {
			t.Errorf("migrated=%v: %v changes after the first report, want 0", migrated, n)
		}
	}
}

// metricValue is the value of the gauge or counter of reg named name, of
// the series whose check label is check ("": the only series).
func metricValue(t *testing.T, reg *prometheus.Registry, name, check string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			label := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "check" {
					label = l.GetValue()
				}
			}
			if label == check {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{check=%q} in the registry", name, check)
	return 0
}
