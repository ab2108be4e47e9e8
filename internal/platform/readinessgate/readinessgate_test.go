package readinessgate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

var clock = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// newGate returns a gate on a fake API server answering with handle, as a
// service account whose token is in the returned file.
func newGate(t *testing.T, cfg Config, handle http.HandlerFunc) (*Gate, string) {
	t.Helper()
	ts := httptest.NewTLSServer(handle)
	t.Cleanup(ts.Close)
	token := filepath.Join(t.TempDir(), "token")
	writeToken(t, token, "token-1\n")
	g := New(cfg, API{URL: ts.URL, TokenFile: token, Client: ts.Client()}, "testsvc", slog.New(slog.DiscardHandler))
	g.now = func() time.Time { return clock }
	return g, token
}

var pod = Config{Condition: "example.com/ready", PodName: "api-0", PodNamespace: "team-a"}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
}

// received is what the fake API server saw of one request.
type received struct {
	method, path, fieldManager, contentType, accept, authorization string
	body                                                           map[string]any
}

// recorder is a fake API server's handler that records every request and
// answers each with the next of statuses (200 once they run out).
type recorder struct {
	mu       sync.Mutex
	requests []received
	statuses []int
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec.mu.Lock()
	rec.requests = append(rec.requests, received{
		method: r.Method, path: r.URL.EscapedPath(), fieldManager: r.URL.Query().Get("fieldManager"),
		contentType: r.Header.Get("Content-Type"), accept: r.Header.Get("Accept"), authorization: r.Header.Get("Authorization"),
		body: body,
	})
	status := http.StatusOK
	if len(rec.statuses) > 0 {
		status, rec.statuses = rec.statuses[0], rec.statuses[1:]
	}
	rec.mu.Unlock()
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"kind":"Pod"}`)
}

func (rec *recorder) received() []received {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.requests
}

func TestGate_PatchesItsPodsStatusAsTheServiceAccount(t *testing.T) {
	tests := []struct {
		name                    string
		call                    func(*Gate, context.Context) error
		status, reason, message string
	}{
		{"declare", (*Gate).Declare, "True", "Ready", "testsvc is ready to serve"},
		{"withdraw", (*Gate).Withdraw, "False", "ShuttingDown", "testsvc is shutting down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			cfg := pod
			cfg.PodNamespace = "team/a" // escaped, not a path separator
			g, _ := newGate(t, cfg, rec.ServeHTTP)
			if err := tt.call(g, t.Context()); err != nil {
				t.Fatal(err)
			}
			got := rec.received()
			if len(got) != 1 {
				t.Fatalf("%d requests, want 1", len(got))
			}
			r := got[0]
			for _, h := range []struct{ what, got, want string }{
				{"method", r.method, http.MethodPatch},
				{"path", r.path, "/api/v1/namespaces/team%2Fa/pods/api-0/status"},
				{"fieldManager", r.fieldManager, "testsvc"},
				{"Content-Type", r.contentType, "application/strategic-merge-patch+json"},
				{"Accept", r.accept, "application/json"},
				{"Authorization", r.authorization, "Bearer token-1"},
			} {
				if h.got != h.want {
					t.Errorf("%s = %q, want %q", h.what, h.got, h.want)
				}
			}
			want := map[string]any{"status": map[string]any{"conditions": []any{map[string]any{
				"type": "example.com/ready", "status": tt.status, "reason": tt.reason, "message": tt.message,
				"lastTransitionTime": "2025-03-04T05:06:07Z",
			}}}}
			if !reflect.DeepEqual(r.body, want) {
				t.Errorf("body = %v\nwant %v", r.body, want)
			}
		})
	}
}

// Projected service-account tokens rotate: a token read once at start-up
// expires while the pod runs.
func TestGate_ReadsTheTokenForEveryRequest(t *testing.T) {
	rec := &recorder{}
	g, token := newGate(t, pod, rec.ServeHTTP)
	if err := g.Withdraw(t.Context()); err != nil {
		t.Fatal(err)
	}
	writeToken(t, token, "token-2")
	if err := g.Withdraw(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := rec.received()
	if len(got) != 2 || got[0].authorization != "Bearer token-1" || got[1].authorization != "Bearer token-2" {
		t.Errorf("requests carried %+v, want token-1 then token-2", got)
	}
}

func TestGate_SaysWhatTheAPIServerRefused(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		forbidden bool
		want      string
	}{
		{"no RBAC", http.StatusForbidden, true, "the service account may not patch pods/status in team-a: bind it a Role granting patch on pods/status"},
		{"wrong pod", http.StatusNotFound, false, "pod api-0 not found in namespace team-a: check POD_NAME and POD_NAMESPACE"},
		{"server error", http.StatusInternalServerError, false, `500 Internal Server Error: {"message":"etcdserver: request timed out"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, _ := newGate(t, pod, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, `{"message":"etcdserver: request timed out"}`+strings.Repeat(" ", 500)+"tail")
			})
			err := g.Withdraw(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, tt.want)
			}
			if errors.Is(err, ErrForbidden) != tt.forbidden {
				t.Errorf("errors.Is(err, ErrForbidden) = %v, want %v", !tt.forbidden, tt.forbidden)
			}
			if strings.Contains(err.Error(), "tail") || strings.Contains(err.Error(), "token-1") {
				t.Errorf("error quotes more than the body's start, or the token: %v", err)
			}
		})
	}
}

// fakeTime is a clock that only the waits between attempts advance.
type fakeTime struct {
	now   time.Time
	waits []time.Duration
}

func (f *fakeTime) install(g *Gate) {
	g.now = func() time.Time { return f.now }
	g.wait = func(ctx context.Context, d time.Duration) error {
		f.waits = append(f.waits, d)
		f.now = f.now.Add(d)
		return ctx.Err()
	}
}

func TestDeclare_RetriesWithCappedBackoffLoggingFailuresSparingly(t *testing.T) {
	// 403 then 503s, 12 failures in all: 42.75 s of backoff.
	statuses := []int{http.StatusForbidden}
	for range 11 {
		statuses = append(statuses, http.StatusServiceUnavailable)
	}
	rec := &recorder{statuses: statuses}
	g, _ := newGate(t, pod, rec.ServeHTTP)
	var logs bytes.Buffer
	g.log = slog.New(slog.NewJSONHandler(&logs, nil))
	ft := &fakeTime{now: clock}
	ft.install(g)

	if err := g.Declare(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.received()); n != 13 {
		t.Errorf("%d requests, want 13", n)
	}
	s, ms := time.Second, time.Millisecond
	wantWaits := []time.Duration{250 * ms, 500 * ms, s, 2 * s, 4 * s, 5 * s, 5 * s, 5 * s, 5 * s, 5 * s, 5 * s, 5 * s}
	if !reflect.DeepEqual(ft.waits, wantWaits) {
		t.Errorf("waits = %v\nwant %v", ft.waits, wantWaits)
	}
	// The first failure, then the first one 30 s after it (the 11th
	// attempt, at 32.75 s), then the success.
	type line struct {
		Level, Msg string
		Attempt    int
	}
	want := []line{
		{"ERROR", "readiness gate not set: the service account lacks the RBAC to patch its pod's status; retrying", 1},
		{"WARN", "readiness gate not set; retrying", 11},
		{"INFO", "readiness gate set", 0},
	}
	var got []line
	for l := range strings.Lines(logs.String()) {
		var v line
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("logged %+v\nwant %+v", got, want)
	}
}

func TestDeclare_ReturnsTheContextsErrorWhenItEndsWhileFailing(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	requests := 0
	g, _ := newGate(t, pod, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if requests++; requests == 3 {
			cancel()
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	(&fakeTime{now: clock}).install(g)

	if err := g.Declare(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Declare = %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 3 {
		t.Errorf("%d requests, want none after the context ended", requests)
	}
}

// blockingServer holds the first True PATCH until release is called, and
// records the status of every PATCH, in the order they arrive.
type blockingServer struct {
	trueArrived chan struct{}
	unblock     chan struct{}
	release     func()
	mu          sync.Mutex
	statuses    []string
}

func newBlockingServer() *blockingServer {
	s := &blockingServer{trueArrived: make(chan struct{}), unblock: make(chan struct{})}
	s.release = sync.OnceFunc(func() { close(s.unblock) })
	return s
}

func (s *blockingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p struct {
		Status struct{ Conditions []struct{ Status string } }
	}
	status := "undecodable" // what the test then sees, instead of a panic here
	if err := json.NewDecoder(r.Body).Decode(&p); err == nil && len(p.Status.Conditions) == 1 {
		status = p.Status.Conditions[0].Status
	}
	s.mu.Lock()
	s.statuses = append(s.statuses, status)
	first := status == "True" && len(s.statuses) == 1
	s.mu.Unlock()
	if first {
		close(s.trueArrived)
		<-s.unblock
	}
}

func (s *blockingServer) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statuses
}

// At SIGTERM, Withdraw may race a Declare whose PATCH is in flight: the
// False must land after the True, or the pod would stay Ready while it
// shuts down.
func TestWithdraw_WaitsForADeclareInFlightThenStopsLaterOnes(t *testing.T) {
	srv := newBlockingServer()
	g, _ := newGate(t, pod, srv.ServeHTTP)
	t.Cleanup(srv.release) // before the server's Close: a failed test must not hang
	waiting := make(chan struct{})
	g.waiting = func() { close(waiting) }

	declared := make(chan error, 1)
	go func() { declared <- g.Declare(t.Context()) }()
	<-srv.trueArrived
	withdrew := make(chan error, 1)
	go func() { withdrew <- g.Withdraw(t.Context()) }()
	select {
	case <-waiting: // Withdraw found the True in flight
	case <-time.After(10 * time.Second):
		t.Fatal("Withdraw did not wait for the PATCH in flight")
	}
	srv.release()
	if err := <-declared; err != nil {
		t.Errorf("Declare: %v", err)
	}
	if err := <-withdrew; err != nil {
		t.Errorf("Withdraw: %v", err)
	}
	if err := g.Declare(t.Context()); err != nil {
		t.Errorf("Declare after Withdraw: %v", err)
	}
	if got, want := srv.received(), []string{"True", "False"}; !reflect.DeepEqual(got, want) {
		t.Errorf("the API server received %v, want %v", got, want)
	}
}

// The drain delay runs in the pod's grace period: a Withdraw held up by a
// PATCH that does not end must give up with its context.
func TestWithdraw_GivesUpWaitingWhenItsContextEnds(t *testing.T) {
	srv := newBlockingServer()
	g, _ := newGate(t, pod, srv.ServeHTTP)
	t.Cleanup(srv.release) // before the server's Close: a failed test must not hang
	ctx, cancel := context.WithCancel(t.Context())
	g.waiting = cancel

	declared := make(chan error, 1)
	go func() { declared <- g.Declare(t.Context()) }()
	<-srv.trueArrived
	if err := g.Withdraw(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Withdraw = %v, want context.Canceled", err)
	}
	srv.release()
	if err := <-declared; err != nil {
		t.Errorf("Declare: %v", err)
	}
	if got, want := srv.received(), []string{"True"}; !reflect.DeepEqual(got, want) {
		t.Errorf("the API server received %v, want %v", got, want)
	}
}

func TestNilGate_IsAGateTurnedOff(t *testing.T) {
	var g *Gate
	if err := g.Declare(t.Context()); err != nil {
		t.Errorf("Declare = %v", err)
	}
	if err := g.Withdraw(t.Context()); err != nil {
		t.Errorf("Withdraw = %v", err)
	}
}

func TestConfigCheck(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // one per error, each a part of its text
	}{
		{"off", Config{}, nil},
		{"off, pod named anyway", Config{PodName: "api-0"}, nil},
		{"on", pod, nil},
		{"without a prefix", Config{Condition: "Migrated", PodName: "p", PodNamespace: "n"}, nil},
		{"with a 253-character prefix", Config{Condition: strings.Repeat("a.", 126) + "a/ready", PodName: "p", PodNamespace: "n"}, nil},
		{"pod unknown", Config{Condition: "example.com/ready"}, []string{
			"POD_NAME must be set when READINESS_GATE_CONDITION is", "POD_NAMESPACE must be set when READINESS_GATE_CONDITION is",
		}},
		{"space", Config{Condition: "Not Valid", PodName: "p", PodNamespace: "n"}, []string{`READINESS_GATE_CONDITION="Not Valid" is not`}},
		{"empty prefix", Config{Condition: "/x", PodName: "p", PodNamespace: "n"}, []string{`READINESS_GATE_CONDITION="/x" is not`}},
		{"two slashes", Config{Condition: "a/b/c", PodName: "p", PodNamespace: "n"}, []string{`READINESS_GATE_CONDITION="a/b/c" is not`}},
		{"uppercase prefix", Config{Condition: "Example.com/ready", PodName: "p", PodNamespace: "n"}, []string{"READINESS_GATE_CONDITION="}},
		{"64-character name", Config{Condition: strings.Repeat("a", 64), PodName: "p", PodNamespace: "n"}, []string{"READINESS_GATE_CONDITION="}},
		{"254-character prefix", Config{Condition: strings.Repeat("a.", 126) + "ab/ready", PodName: "p", PodNamespace: "n"}, []string{"READINESS_GATE_CONDITION="}},
		{"name ending in a dot", Config{Condition: "example.com/ready.", PodName: "p", PodNamespace: "n"}, []string{"READINESS_GATE_CONDITION="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := tt.cfg.Check()
			if len(errs) != len(tt.want) {
				t.Fatalf("Check() = %v, want %d errors", errs, len(tt.want))
			}
			for i, err := range errs {
				if !strings.Contains(err.Error(), tt.want[i]) {
					t.Errorf("error %d = %v, want it to contain %q", i, err, tt.want[i])
				}
			}
		})
	}
}

func TestInCluster_SaysWhatIsMissing(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no host", map[string]string{"KUBERNETES_SERVICE_PORT": "443"}, "KUBERNETES_SERVICE_HOST is not set"},
		{"no port", map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "KUBERNETES_SERVICE_PORT is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := InCluster(func(k string) string { return tt.env[k] })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
