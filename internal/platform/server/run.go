package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Listener is one HTTP server and the listener it serves. Bind listeners
// before Run: a port conflict then fails start-up with a clear error, and
// tests can ask for port 0 and read the port from the "listening" log line.
type Listener struct {
	Name     string
	Server   *http.Server
	Listener net.Listener
}

// Service is what a process serves until it stops, and how it stops.
type Service struct {
	// Public serve the API: they drain, then shut down.
	Public []Listener
	// Admin serves metrics and profiles: it shuts down last, so the drain
	// stays observable.
	Admin Listener
	// Tasks run in the background from the start (migrating, then
	// reconciling, say). Their context ends with ctx's, at the signal, so
	// that a singleton job hands over to another replica at once; an
	// error from one, unless its context had ended, stops the service.
	Tasks []func(ctx context.Context) error
	// Draining is called as the shutdown starts: readiness turns 503.
	Draining func()
	// Finish completes, within the shutdown deadline, work the servers
	// handed off and that outlives their handlers (a bulkhead's calls).
	Finish []func(ctx context.Context) error
	// Drain is how long the servers keep serving, not ready, after the
	// signal, while load balancers notice; Timeout then bounds waiting for
	// requests in flight and Finish, together.
	Drain, Timeout time.Duration
	Log            *slog.Logger
}

// exitGrace bounds the last wait of a shutdown, for the background tasks.
// By then the servers have stopped, and the tasks, stopped at the signal,
// have had the drain and the whole shutdown timeout to end. If one still has not
// (a database that does not answer a leader's resignation), waiting longer
// would not help: exiting closes its connections.
const exitGrace = time.Second

// Run serves s until ctx ends (a signal) or a server or task fails, then
// shuts down gracefully:
//
//  1. Draining is called (readiness turns 503 at once; liveness stays
//     200);
//  2. the public servers keep serving for Drain, while load balancers
//     notice and stop sending; their answers carry Connection: close, so
//     clients reconnect through the load balancer;
//  3. the public servers' Shutdown, then Finish,
//     wait for requests and work in flight, whose contexts are not ctx's
//     and are not cancelled, all within one Timeout; then the admin server
//     stops;
//  4. Run returns the error that stopped it, or nil for a signal.
//
// Run returns within Drain + Timeout (+ at most exitGrace) of the signal,
// whatever is still running then: work cut off at the deadline is logged
// as an error, and Run still returns nil. A shutdown bounded as designed is
// not a crash, and the work it cut off must be safe to abandon (for
// at-most-once work: left for a retry or a reconciler).
//
// Requests' contexts must not derive from ctx (see NewHTTP's base): the
// signal starts the shutdown, it does not abort work in flight.
func Run(ctx context.Context, s Service) error {
	var draining atomic.Bool
	for _, l := range s.Public {
		l.Server.Handler = closeConnsWhileDraining(l.Server.Handler, &draining)
	}

	// Every goroutine below is owned by Run and ends before it returns,
	// or within exitGrace of it.
	var wg sync.WaitGroup
	fatal := make(chan error, len(s.Public)+1+len(s.Tasks))
	for _, l := range append(s.Public[:len(s.Public):len(s.Public)], s.Admin) {
		s.Log.Info("listening", "server", l.Name, "addr", l.Listener.Addr().String())
		wg.Go(func() {
			if err := l.Server.Serve(l.Listener); !errors.Is(err, http.ErrServerClosed) {
				fatal <- fmt.Errorf("%s server: %w", l.Name, err)
			}
		})
	}
	tasksCtx, stopTasks := context.WithCancel(ctx)
	defer stopTasks()
	for _, task := range s.Tasks {
		wg.Go(func() {
			if err := task(tasksCtx); err != nil && tasksCtx.Err() == nil {
				fatal <- err
			}
		})
	}

	var runErr error
	select {
	case <-ctx.Done():
		s.Log.Info("shutdown signal received; draining", "drain_delay", s.Drain, "shutdown_timeout", s.Timeout)
		s.Draining()
		draining.Store(true)
		time.Sleep(s.Drain)
	case runErr = <-fatal:
		s.Log.Error("fatal error; shutting down", "err", runErr)
		s.Draining()
	}
	stopTasks()

	// Every wait from here on is bounded: by this one deadline, then by
	// exitGrace.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	for _, l := range s.Public {
		if err := l.Server.Shutdown(shutdownCtx); err != nil {
			// Close cuts their connections; their handlers run on,
			// unanswered, until the process exits.
			s.Log.Error("requests still in flight at SHUTDOWN_TIMEOUT; closing their connections", "server", l.Name, "err", err)
			l.Server.Close()
		}
	}
	for _, finish := range s.Finish {
		if err := finish(shutdownCtx); err != nil {
			s.Log.Error("work abandoned at SHUTDOWN_TIMEOUT", "err", err)
		}
	}
	if err := s.Admin.Server.Shutdown(shutdownCtx); err != nil {
		s.Admin.Server.Close()
	}
	if !waitWithin(&wg, exitGrace) {
		s.Log.Warn("exiting with background tasks still ending", "waited", exitGrace)
	}
	s.Log.Info("stopped")
	return runErr
}

// waitWithin waits for wg at most d, and reports whether it finished.
func waitWithin(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { // outlives the timeout only until the process exits
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// closeConnsWhileDraining answers every request that starts once draining
// is set with Connection: close. A client still sent here during the drain
// then opens its next connection afresh, which the load balancer routes to
// another replica, instead of reusing this one until Shutdown closes it.
//
// Not http.Server.SetKeepAlivesEnabled(false): that also closes idle
// keep-alive connections at once, racing the requests clients are writing
// on them — a failed POST for a client that does not retry it, at a moment
// when load balancers still send traffic. Shutdown closes the connections
// still idle after the drain, when they no longer do.
func closeConnsWhileDraining(next http.Handler, draining *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}
