package main

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// capacity puts a finite capacity in front of the fake provider, as a real
// provider has one: at most Slots calls worked on at once, each held for
// Hold, the excess waiting in an unbounded line (a saturated dependency's
// backlog). It counts the calls it received and those it worked on after
// their caller had hung up (work nobody reads: wasted). Slots 0 is no
// limit.
type capacity struct {
	next http.Handler

	mu    sync.Mutex
	slots chan struct{}
	hold  time.Duration

	calls, wasted atomic.Int64
}

func newCapacity(next http.Handler) *capacity { return &capacity{next: next} }

// Set changes the capacity for the calls that arrive from now on.
func (c *capacity) Set(slots int, hold time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slots, c.hold = nil, hold
	if slots > 0 {
		c.slots = make(chan struct{}, slots)
	}
}

// Counts returns the calls received and wasted so far.
func (c *capacity) Counts() (calls, wasted int64) { return c.calls.Load(), c.wasted.Load() }

func (c *capacity) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.calls.Add(1)
	// Read the body first: net/http notices a caller hanging up (and ends
	// r.Context()) only once the handler has read the request's body, so
	// without this no wait in line would ever count as wasted.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	c.mu.Lock()
	slots, hold := c.slots, c.hold
	c.mu.Unlock()
	if slots != nil {
		slots <- struct{}{} // waits in line, even for a caller gone: a backlog does
		defer func() { <-slots }()
	}
	if hold > 0 {
		time.Sleep(hold)
	}
	if r.Context().Err() != nil {
		c.wasted.Add(1)
	}
	c.next.ServeHTTP(w, r)
}
