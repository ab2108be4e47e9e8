package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

func listen(t *testing.T, name string, h http.Handler) Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return Listener{Name: name, Server: NewHTTP(h, HTTPConfig{ReadHeaderTimeout: time.Second}, context.Background(), slog.New(slog.DiscardHandler)), Listener: ln}
}

// events records what happens, in order.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) { e.mu.Lock(); e.list = append(e.list, s); e.mu.Unlock() }
func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

func TestRun_DrainsThenShutsDownInOrderWithinItsBounds(t *testing.T) {
	var ev events
	inHandler, release := make(chan struct{}), make(chan struct{})
	api := listen(t, "api", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(inHandler)
			<-release // in flight when the signal comes
			ev.add("slow request answered")
		}
	}))
	admin := listen(t, "admin", http.NotFoundHandler())
	ctx, signal := context.WithCancel(context.Background())
	taskStopped := make(chan struct{})
	const drain = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Service{
			Public: []Listener{api},
			Admin:  admin,
			Tasks: []func(context.Context) error{func(ctx context.Context) error {
				<-ctx.Done()
				ev.add("task stopped")
				close(taskStopped)
				return nil
			}},
			Draining: func() { ev.add("draining") },
			Finish: []func(context.Context) error{func(context.Context) error {
				ev.add("finish")
				return nil
			}},
			Drain:   drain,
			Timeout: 5 * time.Second,
			Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}()
	base := "http://" + api.Listener.Addr().String()
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get(base + "/slow")
		if err == nil {
			resp.Body.Close()
		}
		slow <- err
	}()
	<-inHandler

	signalled := time.Now()
	signal()
	// While draining, the server still serves, and asks clients to close.
	var resp *http.Response
	for {
		var err error
		resp, err = http.Get(base + "/during")
		if err != nil {
			t.Fatalf("a request during the drain: %v", err)
		}
		resp.Body.Close()
		if resp.Close {
			break
		}
		if time.Since(signalled) > drain {
			t.Fatal("no Connection: close during the drain")
		}
	}
	<-taskStopped // tasks stop at the signal, not after the drain
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil after a signal", err)
	}
	if err := <-slow; err != nil {
		t.Errorf("the request in flight at the signal: %v, want its answer", err)
	}
	// The task stops as the drain starts (either may be seen first);
	// then the request in flight is answered, then Finish runs.
	got := ev.get()
	if len(got) != 4 || !slices.Contains(got[:2], "draining") || !slices.Contains(got[:2], "task stopped") ||
		got[2] != "slow request answered" || got[3] != "finish" {
		t.Errorf("order %v, want draining and task stopped, then the request answered, then finish", got)
	}
	if took := time.Since(signalled); took < drain {
		t.Errorf("Run returned %s after the signal, before the drain (%s) ended", took, drain)
	}
	if _, err := net.Dial("tcp", admin.Listener.Addr().String()); err == nil {
		t.Error("the admin server still listens after Run returned")
	}
}

func TestRun_AFailingTaskStopsTheService(t *testing.T) {
	boom := errors.New("migrations failed")
	drained := false
	err := Run(context.Background(), Service{
		Public:   []Listener{listen(t, "api", http.NotFoundHandler())},
		Admin:    listen(t, "admin", http.NotFoundHandler()),
		Tasks:    []func(context.Context) error{func(context.Context) error { return boom }},
		Draining: func() { drained = true },
		Drain:    time.Hour, // a failure does not wait for load balancers
		Timeout:  time.Second,
		Log:      slog.New(slog.DiscardHandler),
	})
	if !errors.Is(err, boom) || !drained {
		t.Fatalf("Run = %v (draining called: %v), want the task's error, readiness off", err, drained)
	}
}

func TestRun_ReturnsAtTheShutdownDeadlineWithWorkStillRunning(t *testing.T) {
	inHandler := make(chan struct{})
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	api := listen(t, "api", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		close(inHandler)
		<-stuck // outlives the shutdown timeout
	}))
	ctx, signal := context.WithCancel(context.Background())
	const timeout = 300 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Service{
			Public: []Listener{api}, Admin: listen(t, "admin", http.NotFoundHandler()),
			Draining: func() {}, Timeout: timeout, Log: slog.New(slog.DiscardHandler),
		})
	}()
	go func() {
		if resp, err := http.Get("http://" + api.Listener.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-inHandler
	start := time.Now()
	signal()
	select {
	case err := <-done:
		if took := time.Since(start); took < timeout || took > timeout+exitGrace {
			t.Errorf("returned %s after the signal, want between the timeout %s and %s more", took, timeout, exitGrace)
		}
		if err != nil {
			t.Errorf("Run = %v, want nil: a bounded shutdown is not a crash", err)
		}
	case <-time.After(timeout + exitGrace + 5*time.Second):
		t.Fatal("Run did not return")
	}
}
