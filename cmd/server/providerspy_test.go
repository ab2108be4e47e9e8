package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// providerSpy serves a fake provider through a handler that counts the
// charge requests per provider idempotency key, and can hold the answer to
// the first charge until the test lets it go. The fake's ledger keeps one
// charge per key whatever happens, so only the requests show whether two
// servers drove the same payment at once.
type providerSpy struct {
	fake *fakeprovider.Provider
	url  string

	mu       sync.Mutex
	posts    map[string]int // charge requests per provider key
	hold     bool           // hold the next charge's answer
	held     chan struct{}  // closed when a charge is recorded and held
	released chan struct{}  // closed by release
}

// newSpiedStack is newStack with its fake provider behind a providerSpy.
func newSpiedStack(t *testing.T, overrides map[string]string) (*stack, *providerSpy) {
	t.Helper()
	spy := &providerSpy{fake: fakeprovider.New(), posts: map[string]int{}}
	srv := httptest.NewServer(spy)
	t.Cleanup(srv.Close)
	spy.url = srv.URL
	env := map[string]string{"PROVIDER_URL": srv.URL}
	for k, v := range overrides {
		env[k] = v
	}
	st := newStack(t, env)
	st.fake = spy.fake
	t.Cleanup(spy.release) // a held answer never outlives the test
	return st, spy
}

func (s *providerSpy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/charges" {
		s.fake.ServeHTTP(w, r)
		return
	}
	s.mu.Lock()
	s.posts[r.Header.Get("Idempotency-Key")]++
	hold, held, release := s.hold, s.held, s.released
	s.hold = false
	s.mu.Unlock()
	if !hold {
		s.fake.ServeHTTP(w, r)
		return
	}
	// Record the charge now, answer only once released.
	rec := httptest.NewRecorder()
	s.fake.ServeHTTP(rec, r)
	close(held)
	<-release
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// holdNext makes the next charge be recorded at once and answered only
// after release; the returned channel is closed once it is recorded.
func (s *providerSpy) holdNext() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold, s.held, s.released = true, make(chan struct{}), make(chan struct{})
	return s.held
}

// release lets a held answer go. Calling it again does nothing.
func (s *providerSpy) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released != nil {
		select {
		case <-s.released:
		default:
			close(s.released)
		}
	}
}

// chargeRequests returns how many charge requests carried each provider
// key.
func (s *providerSpy) chargeRequests() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.posts))
	for k, v := range s.posts {
		out[k] = v
	}
	return out
}
