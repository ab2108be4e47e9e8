package main

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestBalancer_PickRoundRobinsOverTheInstancesInService checks that pick
// spreads requests evenly over the instances whose last probe said ready
// or degraded, and sends none to the others while at least one is in
// service.
func TestBalancer_PickRoundRobinsOverTheInstancesInService(t *testing.T) {
	tests := []struct {
		name   string
		states map[string]readiness // of instances a, b and c
		want   []string             // the instances that get requests
	}{
		{"all ready", map[string]readiness{"a": ready, "b": ready, "c": ready}, []string{"a", "b", "c"}},
		{"degraded is in service", map[string]readiness{"a": ready, "b": degraded, "c": degraded}, []string{"a", "b", "c"}},
		{"not ready is out", map[string]readiness{"a": ready, "b": notReady, "c": ready}, []string{"a", "c"}},
		{"down is out", map[string]readiness{"a": down, "b": ready, "c": down}, []string{"b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBalancer()
			for _, name := range []string{"a", "b", "c"} {
				a := &app{name: name, api: "http://" + name}
				b.add(a)
				setProbed(b, a, tt.states[name], a.api)
			}
			const rounds = 4
			got := map[string]int{}
			for range rounds * len(tt.want) {
				api, name, ok := b.pick()
				if !ok {
					t.Fatal("pick: ok = false with instances in service")
				}
				if api != "http://"+name {
					t.Fatalf("pick gave %s the address %s", name, api)
				}
				got[name]++
			}
			if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, tt.want) {
				t.Fatalf("requests went to %v, want %v", names, tt.want)
			}
			for name, n := range got {
				if n != rounds {
					t.Errorf("%s got %d requests, want %d (an even share)", name, n, rounds)
				}
			}
		})
	}
}

// TestBalancer_PicksTheAddressItProbedNotTheInstancesCurrentOne checks that
// an instance restarted on a new address keeps getting requests at the old
// one until it is probed again: the balancer knows only what its probes
// said.
func TestBalancer_PicksTheAddressItProbedNotTheInstancesCurrentOne(t *testing.T) {
	b := newBalancer()
	a := &app{name: "a", api: "http://old"}
	b.add(a)
	setProbed(b, a, ready, "http://old")
	a.mu.Lock()
	a.api = "http://new" // restarted, not probed yet
	a.mu.Unlock()

	if api, _, ok := b.pick(); !ok || api != "http://old" {
		t.Errorf("pick() = %q, %v; want the probed address http://old", api, ok)
	}
}

// TestBalancer_PanicRoutesToEveryInstanceWithAnAddressWhenNoneIsInService
// checks the fallback: with no instance ready or degraded, requests go to
// every instance that has an address rather than to none.
func TestBalancer_PanicRoutesToEveryInstanceWithAnAddressWhenNoneIsInService(t *testing.T) {
	b := newBalancer()
	a := &app{name: "a", api: "http://a"}
	c := &app{name: "c", api: "http://c"}
	never := &app{name: "never-started"}
	for _, x := range []*app{a, never, c} {
		b.add(x)
	}
	setProbed(b, a, notReady, a.api)
	setProbed(b, never, down, "")
	// c was never probed.

	got := map[string]string{}
	for range 4 {
		api, name, ok := b.pick()
		if !ok {
			t.Fatal("pick: ok = false with instances that have an address")
		}
		got[name] = api
	}
	want := map[string]string{"a": "http://a", "c": "http://c"}
	if !maps.Equal(got, want) {
		t.Errorf("requests went to %v, want %v", got, want)
	}
}

// TestBalancer_PickIsNotOKBeforeAnyInstanceHasAnAddress checks that pick
// says so, rather than giving an empty address, before the first start.
func TestBalancer_PickIsNotOKBeforeAnyInstanceHasAnAddress(t *testing.T) {
	for _, apps := range [][]*app{nil, {{name: "a"}, {name: "b"}}} {
		b := newBalancer()
		for _, a := range apps {
			b.add(a)
		}
		if api, name, ok := b.pick(); ok {
			t.Errorf("with %d instances never started: pick() = %q, %q, true; want ok = false", len(apps), api, name)
		}
	}
}

// TestBalancer_KeepsSendingToAnAddressUntilAProbeFindsItGone follows an
// instance through a restart, with real probes: its old address stays in
// service until a probe of the new one, which keeps it out until it
// answers ready there.
func TestBalancer_KeepsSendingToAnAddressUntilAProbeFindsItGone(t *testing.T) {
	ctx := t.Context()
	old, other := newReadyz(t, http.StatusOK, readyBody), newReadyz(t, http.StatusOK, readyBody)
	a, b := runningApp("a", old.URL), runningApp("b", other.URL)
	lb := newBalancer()
	lb.add(a)
	lb.add(b)
	lb.probe(ctx)
	if got := pickNames(t, lb, 4); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("before the restart, requests went to %v, want [a b]", got)
	}

	// a is restarted on a new address, not ready yet there.
	old.Close()
	starting := newReadyz(t, http.StatusServiceUnavailable, `{"status":"unavailable"}`)
	a.mu.Lock()
	a.api = starting.URL
	a.mu.Unlock()
	if got := pickAddresses(t, lb, 4); !slices.Contains(got, old.URL) || slices.Contains(got, starting.URL) {
		t.Errorf("before the next probe, requests went to %v, want the old address %s and not the new one", got, old.URL)
	}

	lb.probe(ctx)
	if got := pickNames(t, lb, 4); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after a probe found a not ready, requests went to %v, want [b]", got)
	}

	starting.set(http.StatusOK, readyBody)
	lb.probe(ctx)
	if got := pickAddresses(t, lb, 4); !slices.Contains(got, starting.URL) || slices.Contains(got, old.URL) {
		t.Errorf("after a probe found a ready, requests went to %v, want its new address %s", got, starting.URL)
	}
}

const readyBody = `{"status":"ok","checks":{"migrations":"ok","postgres":"ok","redis":"ok"}}`

// TestBalancerProbe_ClassifiesReadiness checks how a probe reads the
// readiness endpoint: 200 with every check ok is ready, 200 with a check
// not ok is degraded, any other status is not ready, and no answer (or no
// process) is down. It also checks that the state is kept with the address
// that was probed.
func TestBalancerProbe_ClassifiesReadiness(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   readiness
	}{
		{"every check ok", http.StatusOK, readyBody, ready},
		{"an optional dependency down", http.StatusOK,
			`{"status":"ok","checks":{"migrations":"ok","postgres":"ok","redis":"degraded: x"}}`, degraded},
		{"a body that is not JSON", http.StatusOK, "ok", ready},
		{"no checks", http.StatusOK, `{"status":"ok"}`, ready},
		{"503", http.StatusServiceUnavailable,
			`{"status":"unavailable","checks":{"postgres":"unavailable: x","redis":"ok"}}`, notReady},
		{"500", http.StatusInternalServerError, "", notReady},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newReadyz(t, tt.status, tt.body)
			a := runningApp("a", srv.URL)
			lb := newBalancer()
			lb.add(a)
			lb.probe(t.Context())
			if got := lb.States()["a"]; got != tt.want {
				t.Errorf("readiness = %v, want %v", got, tt.want)
			}
			if got := probedAt(lb, a); got != srv.URL {
				t.Errorf("state kept for address %q, want the probed %q", got, srv.URL)
			}
		})
	}

	t.Run("no answer", func(t *testing.T) {
		srv := newReadyz(t, http.StatusOK, readyBody)
		srv.Close()
		lb := newBalancer()
		lb.add(runningApp("a", srv.URL))
		lb.probe(t.Context())
		if got := lb.States()["a"]; got != down {
			t.Errorf("readiness = %v, want down", got)
		}
	})

	t.Run("process gone", func(t *testing.T) {
		srv := newReadyz(t, http.StatusOK, readyBody)
		exited := runningApp("exited", srv.URL)
		close(exited.exited)
		stopped := &app{name: "stopped", api: srv.URL} // stop() cleared cmd
		lb := newBalancer()
		lb.add(exited)
		lb.add(stopped)
		lb.probe(t.Context())
		for name, got := range lb.States() {
			if got != down {
				t.Errorf("%s: readiness = %v, want down although its address answers ready", name, got)
			}
		}
		if srv.hits() != 0 {
			t.Errorf("the readiness endpoint was asked %d times, want none for an instance not running", srv.hits())
		}
	})
}

// TestBalancer_WaitReadyReturnsOnceReadyAtTheCurrentAddress checks that
// waitReady waits for a probe of the instance's current address, ready or
// degraded, and returns as soon as the state shows it.
func TestBalancer_WaitReadyReturnsOnceReadyAtTheCurrentAddress(t *testing.T) {
	for _, r := range []readiness{ready, degraded} {
		t.Run(r.String(), func(t *testing.T) {
			lb := newBalancer()
			a := &app{name: "a", api: "http://new"}
			lb.add(a)
			setProbed(lb, a, ready, "http://old") // ready, but before the restart

			done := make(chan error, 1)
			go func() { done <- lb.waitReady(t.Context(), a) }()
			setProbed(lb, a, r, "http://new")
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("waitReady: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("waitReady did not return after the state showed the instance in service")
			}
		})
	}
}

// TestBalancer_WaitReadyReturnsTheContextErrorWhenItEndsFirst checks that
// waitReady gives up with ctx's error, and is not satisfied by a ready
// state recorded for an address the instance no longer has.
func TestBalancer_WaitReadyReturnsTheContextErrorWhenItEndsFirst(t *testing.T) {
	lb := newBalancer()
	a := &app{name: "a", api: "http://new"}
	lb.add(a)
	setProbed(lb, a, ready, "http://old")

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- lb.waitReady(ctx, a) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("waitReady = %v, want %v", err, context.Canceled)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waitReady did not return after its context ended")
	}
}

// setProbed records what a probe of a at api found.
func setProbed(b *balancer, a *app, r readiness, api string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.state[a] = probed{r, api}
}

// probedAt is the address of a's last probe.
func probedAt(b *balancer, a *app) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state[a].api
}

// runningApp is an instance that counts as running at api, with no
// process: running() looks only at cmd being set and exited being open.
func runningApp(name, api string) *app {
	return &app{name: name, api: api, admin: api, cmd: &exec.Cmd{}, exited: make(chan struct{})}
}

// pickNames picks n times and returns the instances picked, sorted and
// without repeats.
func pickNames(t *testing.T, b *balancer, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	for range n {
		_, name, ok := b.pick()
		if !ok {
			t.Fatal("pick: ok = false")
		}
		seen[name] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// pickAddresses picks n times and returns the addresses picked, sorted and
// without repeats.
func pickAddresses(t *testing.T, b *balancer, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	for range n {
		api, _, ok := b.pick()
		if !ok {
			t.Fatal("pick: ok = false")
		}
		seen[api] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// readyz is a readiness endpoint whose answer the test sets.
type readyz struct {
	*httptest.Server

	mu     sync.Mutex
	status int
	body   string
	n      int
}

func newReadyz(t *testing.T, status int, body string) *readyz {
	t.Helper()
	r := &readyz{status: status, body: body}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/health/ready" {
			http.NotFound(w, req)
			return
		}
		r.mu.Lock()
		status, body := r.status, r.body
		r.n++
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *readyz) set(status int, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status, r.body = status, body
}

func (r *readyz) hits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}
