package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCapacity_WorksOnOneCallAtATimeAndQueuesTheRest checks that with one
// slot at most one call reaches the provider at a time, and that the calls
// beyond it wait their turn and are all served: none is refused.
func TestCapacity_WorksOnOneCallAtATimeAndQueuesTheRest(t *testing.T) {
	g := newGate()
	c := newCapacity(g)
	c.Set(1, 0)

	const n = 3
	codes := make(chan int, n)
	for range n {
		go func() { codes <- serve(context.Background(), c) }()
	}
	g.waitEntered(t)
	eventually(t, "every call has arrived", func() bool { calls, _ := c.Counts(); return calls == n })
	for i := range n {
		if i > 0 {
			g.waitEntered(t)
		}
		g.release <- struct{}{}
	}
	for range n {
		if code := <-codes; code != http.StatusNoContent {
			t.Errorf("a call was answered %d, want %d from the provider", code, http.StatusNoContent)
		}
	}
	if got := g.maxInFlight.Load(); got != 1 {
		t.Errorf("%d calls were worked on at once, want at most 1", got)
	}
	if calls, wasted := c.Counts(); calls != n || wasted != 0 {
		t.Errorf("Counts() = %d calls, %d wasted; want %d, 0", calls, wasted, n)
	}
}

// TestCapacity_WithoutSlotsWorksOnEveryCallAtOnce checks that Set(0, 0)
// puts no limit: every call reaches the provider before any is answered.
func TestCapacity_WithoutSlotsWorksOnEveryCallAtOnce(t *testing.T) {
	g := newGate()
	c := newCapacity(g)
	c.Set(1, 0)
	c.Set(0, 0) // and back to no limit

	const n = 5
	codes := make(chan int, n)
	for range n {
		go func() { codes <- serve(context.Background(), c) }()
	}
	for range n {
		g.waitEntered(t)
	}
	for range n {
		g.release <- struct{}{}
	}
	for range n {
		<-codes
	}
	if got := g.maxInFlight.Load(); got != n {
		t.Errorf("%d calls were worked on at once, want all %d", got, n)
	}
}

// TestCapacity_SetAppliesToTheCallsThatArriveAfterIt checks that lifting
// the limit lets a new call through while an earlier one still holds the
// only slot of the old limit.
func TestCapacity_SetAppliesToTheCallsThatArriveAfterIt(t *testing.T) {
	g := newGate()
	c := newCapacity(g)
	c.Set(1, 0)

	codes := make(chan int, 2)
	go func() { codes <- serve(context.Background(), c) }()
	g.waitEntered(t)
	c.Set(0, 0)
	go func() { codes <- serve(context.Background(), c) }()
	g.waitEntered(t) // would block: the first call still holds its slot
	g.release <- struct{}{}
	g.release <- struct{}{}
	<-codes
	<-codes
	if got := g.maxInFlight.Load(); got != 2 {
		t.Errorf("%d calls were worked on at once, want 2", got)
	}
}

// TestCapacity_HoldsEveryCall checks that each call takes at least the
// hold before it reaches the provider.
func TestCapacity_HoldsEveryCall(t *testing.T) {
	const hold = 50 * time.Millisecond
	c := newCapacity(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c.Set(0, hold)
	began := time.Now()
	serve(context.Background(), c)
	if took := time.Since(began); took < hold {
		t.Errorf("a call took %v, want at least the hold %v", took, hold)
	}
}

// TestCapacity_CountsACallWhoseCallerLeftWhileInLineAsWasted checks that a
// call whose caller is gone by the time its turn comes is still worked on (a
// backlog does not know) and counted as wasted, while a call whose caller
// waited is not.
func TestCapacity_CountsACallWhoseCallerLeftWhileInLineAsWasted(t *testing.T) {
	g := newGate()
	c := newCapacity(g)
	c.Set(1, 0)

	codes := make(chan int, 2)
	go func() { codes <- serve(context.Background(), c) }()
	g.waitEntered(t)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	go func() { codes <- serve(gone, c) }()
	eventually(t, "the second call is in line", func() bool { calls, _ := c.Counts(); return calls == 2 })
	g.release <- struct{}{}
	g.waitEntered(t) // the abandoned call reaches the provider all the same
	g.release <- struct{}{}
	<-codes
	<-codes
	if calls, wasted := c.Counts(); calls != 2 || wasted != 1 {
		t.Errorf("Counts() = %d calls, %d wasted; want 2, 1", calls, wasted)
	}
}

// TestCapacity_CountsACallWhoseCallerHungUpOverHTTPAsWasted checks wasted
// calls as the game day has them: over HTTP, from a caller that hangs up
// during the hold. The charges the instances send are POSTs with a body,
// and net/http watches a connection for a hang-up (ending r.Context())
// only once the handler has read the request's body to its end: the POST
// case fails unless capacity reads it before it waits.
func TestCapacity_CountsACallWhoseCallerHungUpOverHTTPAsWasted(t *testing.T) {
	const hold = 500 * time.Millisecond // ample for the server to see a hang-up
	tests := []struct {
		method, body string
	}{
		{http.MethodGet, ""},
		{http.MethodPost, `{"amount":1000,"currency":"usd"}`},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			served := make(chan struct{}, 1)
			c := newCapacity(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				served <- struct{}{}
			}))
			c.Set(0, hold)
			srv := httptest.NewServer(c)
			defer srv.Close()

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, tt.method, srv.URL+"/v1/charges", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			sent := make(chan error, 1)
			go func() {
				resp, err := srv.Client().Do(req)
				if err == nil {
					resp.Body.Close()
				}
				sent <- err
			}()
			eventually(t, "the call has arrived", func() bool { calls, _ := c.Counts(); return calls == 1 })
			cancel()
			if err := <-sent; !errors.Is(err, context.Canceled) {
				t.Fatalf("the caller got %v, want %v", err, context.Canceled)
			}
			select {
			case <-served:
			case <-time.After(10 * time.Second):
				t.Fatal("the provider never got the call")
			}
			if calls, wasted := c.Counts(); calls != 1 || wasted != 1 {
				t.Errorf("Counts() = %d calls, %d wasted; want 1, 1", calls, wasted)
			}
		})
	}
}

// gate is a provider that reports each call it gets and holds it until
// the test releases it, measuring how many calls it holds at once.
type gate struct {
	entered, release chan struct{}

	inFlight, maxInFlight atomic.Int64
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := g.inFlight.Add(1)
	for {
		m := g.maxInFlight.Load()
		if n <= m || g.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	g.entered <- struct{}{}
	<-g.release
	g.inFlight.Add(-1)
	w.WriteHeader(http.StatusNoContent)
}

// waitEntered waits for the next call to reach the gate.
func (g *gate) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no call reached the provider")
	}
}

// serve sends one call through h with ctx, and returns the status it got.
func serve(ctx context.Context, h http.Handler) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/charges", nil))
	return rec.Code
}

// eventually waits, up to a bound far above what cond needs, until cond
// holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
