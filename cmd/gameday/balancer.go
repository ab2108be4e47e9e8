package main

import (
	"context"
	"sync"
	"time"
)

// balancer spreads the load over the instances as a load balancer or a
// Kubernetes Service does: round robin over the instances whose readiness
// said ready at the last probe (every probeEvery, as a readiness probe
// with a period of half a second). An instance that stops
// being ready stops getting requests within a probe; one that is killed
// gets them until its probe fails, as in life. When no instance is ready,
// it sends to every instance it has an address for rather than to none (Envoy calls this
// panic routing): a dependency that fails every readiness probe at once
// should not also take away the requests that could still succeed.
type balancer struct {
	mu    sync.Mutex
	apps  []*app
	state map[*app]probed
	next  int
}

// probed is what the last probe of an instance found, at which address: a
// restarted instance is a new address, out of service until probed ready,
// while its old address stays in service until a probe finds it gone.
type probed struct {
	readiness
	api string
}

const probeEvery = 500 * time.Millisecond

func newBalancer() *balancer { return &balancer{state: map[*app]probed{}} }

func (b *balancer) add(a *app) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.apps = append(b.apps, a)
}

// run probes every instance every probeEvery until ctx ends.
func (b *balancer) run(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		b.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *balancer) probe(ctx context.Context) {
	b.mu.Lock()
	apps := append([]*app(nil), b.apps...)
	b.mu.Unlock()
	for _, a := range apps {
		api := a.address()
		st, _ := a.readiness(ctx)
		if a.address() != api {
			continue // restarted while probed: the next probe says where it is
		}
		b.mu.Lock()
		b.state[a] = probed{st, api}
		b.mu.Unlock()
	}
}

// States returns the last probed state of each instance.
func (b *balancer) States() map[string]readiness {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]readiness{}
	for a, p := range b.state {
		out[a.name] = p.readiness
	}
	return out
}

// pick returns the API address of the instance to send the next request
// to, and its name. It knows only what its probes said: an instance killed
// since the last probe still gets requests, which fail, as they do behind
// a real load balancer. ok is false before any instance has started.
func (b *balancer) pick() (api, name string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	type target struct {
		name, api string
	}
	var inService []target
	for _, a := range b.apps {
		if p := b.state[a]; p.readiness == ready || p.readiness == degraded {
			inService = append(inService, target{a.name, p.api})
		}
	}
	if len(inService) == 0 {
		for _, a := range b.apps {
			if api := a.address(); api != "" {
				inService = append(inService, target{a.name, api})
			}
		}
	}
	if len(inService) == 0 {
		return "", "", false
	}
	t := inService[b.next%len(inService)]
	b.next++
	return t.api, t.name, true
}

// waitReady waits until the balancer has seen a ready, as a rollout waits
// for a new instance to be in the load balancer before it stops the next.
func (b *balancer) waitReady(ctx context.Context, a *app) error {
	for {
		b.mu.Lock()
		p := b.state[a]
		b.mu.Unlock()
		if (p.readiness == ready || p.readiness == degraded) && p.api == a.address() {
			return nil
		}
		if err := sleep(ctx, probeEvery/5); err != nil {
			return err
		}
	}
}
