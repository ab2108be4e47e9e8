package main

import (
	"bytes"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"
)

// slowProvider is a saturated dependency: capacity workers take requests
// from one line, first come first served, and work on each for hold; the
// line has no bound. Like most servers it cannot tell that a caller hung up
// while its request waited (unless dropAbandoned): the request keeps its
// place and its work is done all the same, for nobody.
type slowProvider struct {
	next          http.Handler
	hold          time.Duration
	dropAbandoned bool
	line          chan *call
	stop          chan struct{} // closed to turn away everyone still in line
	workers       sync.WaitGroup

	mu                   sync.Mutex
	busy, queued         int
	peakBusy, peakQueued int
	wasted               int // requests worked on after their caller had gone
}

// A call is a request in line. Its state moves once, from waiting to taken
// (by a worker) or withdrawn (by its handler), so exactly one side acts.
type call struct {
	r      *http.Request
	state  atomic.Int32
	answer chan *httptest.ResponseRecorder // buffered: a worker never waits for a handler
}

const (
	waiting int32 = iota
	taken
	withdrawn
)

func newSlowProvider(next http.Handler, capacity int, hold time.Duration, dropAbandoned bool) *slowProvider {
	p := &slowProvider{
		next: next, hold: hold, dropAbandoned: dropAbandoned,
		line: make(chan *call, 1<<17), stop: make(chan struct{}),
	}
	for range capacity {
		p.workers.Go(p.work)
	}
	return p
}

func (p *slowProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The whole request is read before it joins the line, as a backlog
	// holds whole requests; then net/http watches the connection and
	// cancels r.Context() if the caller hangs up.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	c := &call{r: r.Clone(r.Context()), answer: make(chan *httptest.ResponseRecorder, 1)}
	c.r.Body = io.NopCloser(bytes.NewReader(body))
	p.update(func() { p.queued++ })
	p.line <- c

	select {
	case rec := <-c.answer:
		relay(w, rec)
	case <-r.Context().Done():
		// Returning frees the dead connection, so a long line costs no
		// file descriptors; the call stays in line unless dropped.
		if p.dropAbandoned && c.state.CompareAndSwap(waiting, withdrawn) {
			p.update(func() { p.queued-- })
		}
	case <-p.stop:
		if c.state.CompareAndSwap(waiting, withdrawn) {
			p.update(func() { p.queued-- })
			http.Error(w, "provider stopping", http.StatusServiceUnavailable)
			return
		}
		relay(w, <-c.answer) // a worker has it: at most hold
	}
}

func relay(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	maps.Copy(w.Header(), rec.Header())
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// work is one worker: it takes calls from the line until Close.
func (p *slowProvider) work() {
	for {
		var c *call
		select {
		case <-p.stop:
			return
		case c = <-p.line:
		}
		if !c.state.CompareAndSwap(waiting, taken) {
			continue // withdrawn
		}
		p.update(func() { p.queued--; p.busy++ })
		time.Sleep(p.hold)
		rec := httptest.NewRecorder()
		p.next.ServeHTTP(rec, c.r)
		p.update(func() {
			p.busy--
			if c.r.Context().Err() != nil {
				p.wasted++
			}
		})
		c.answer <- rec
	}
}

// update changes the counters under the lock and keeps their peaks.
func (p *slowProvider) update(change func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	change()
	p.peakBusy = max(p.peakBusy, p.busy)
	p.peakQueued = max(p.peakQueued, p.queued)
}

// Close turns away the calls still in line and stops the workers, so that
// the next mode starts without the last one's backlog.
func (p *slowProvider) Close() {
	close(p.stop)
	p.workers.Wait()
}

func (p *slowProvider) stats() (peakBusy, peakQueued, wasted int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peakBusy, p.peakQueued, p.wasted
}
