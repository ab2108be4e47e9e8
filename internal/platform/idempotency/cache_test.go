package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

const (
	lockTTL     = 30 * time.Second
	responseTTL = time.Hour
)

// commands counts the commands a Redis client sends, pipelines as one
// round trip each.
type commands struct {
	mu    sync.Mutex
	names []string
}

func (c *commands) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.record(cmd.Name())
		return next(ctx, cmd)
	}
}

func (c *commands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.record("pipeline")
		return next(ctx, cmds)
	}
}

func (c *commands) record(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.names = append(c.names, name)
}

// take returns the commands sent since the last take.
func (c *commands) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := c.names
	c.names = nil
	return names
}

// cacheEnv is a Cache on a Redis client whose commands are counted, and
// a client of its own for the test to look at Redis with.
type cacheEnv struct {
	cache    *idempotency.Cache
	commands *commands
	redis    *redis.Client // the test's, uncounted
}

// newCache returns a Cache on rdb, behind a breaker that opens after three
// failures in a row.
func newCache(t *testing.T, rdb *redis.Client) (*idempotency.Cache, *commands) {
	t.Helper()
	breaker, err := resilience.NewBreaker(resilience.BreakerSettings{
		Name: "redis", Window: time.Minute, MinRequests: 3, FailureRatio: 1, OpenTimeout: time.Minute, HalfOpenProbes: 1,
	}, idempotency.RedisOutcome, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cmds := &commands{}
	rdb.AddHook(cmds)
	return idempotency.NewCache(rdb, idempotency.CacheSettings{Prefix: "test", ResponseTTL: responseTTL, Timeout: 2 * time.Second}, breaker), cmds
}

func newCacheEnv(t *testing.T) *cacheEnv {
	t.Helper()
	url := testenv.RedisURL(t)
	client := func() *redis.Client {
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}
	cache, cmds := newCache(t, client())
	return &cacheEnv{cache: cache, commands: cmds, redis: client()}
}

// only returns the one Redis key matching pattern: the cache's keys are
// its own business, but each test's database holds only its own.
func (e *cacheEnv) only(t *testing.T, pattern string) string {
	t.Helper()
	keys, err := e.redis.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Fatalf("Redis keys %s: %v, want one", pattern, keys)
	}
	return keys[0]
}

func (e *cacheEnv) count(t *testing.T, pattern string) int {
	t.Helper()
	keys, err := e.redis.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

func TestCache_BeginLocksFinishStoresAndBeginReplays(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")

	stored, token, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil || stored != nil || token == "" {
		t.Fatalf("Begin of a fresh key: %+v, %q, %v; want its lock", stored, token, err)
	}
	// The lock expires on its own, in case its release is lost.
	if ttl := e.redis.PTTL(ctx, e.only(t, "*:lock")).Val(); ttl <= 0 || ttl > lockTTL {
		t.Errorf("the lock lasts %v, want up to %v", ttl, lockTTL)
	}
	if stored, token2, err := e.cache.Begin(ctx, req, lockTTL); !errors.Is(err, idempotency.ErrInFlight) || stored != nil || token2 != "" {
		t.Errorf("Begin of a locked key: %+v, %q, %v; want ErrInFlight", stored, token2, err)
	}

	resp := idempotency.Response{
		Status: http.StatusCreated,
		Header: http.Header{"Content-Type": {"application/json"}, "Location": {"/things/thing-1"}},
		Body:   []byte("{\"id\":\"thing-1\"}\n\x00\xff"),
		Final:  true,
	}
	if err := e.cache.Finish(ctx, req, token, &resp); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "*:lock"); n != 0 {
		t.Errorf("%d locks after Finish, want it released", n)
	}
	if ttl := e.redis.PTTL(ctx, e.only(t, "*:response")).Val(); ttl <= 0 || ttl > responseTTL {
		t.Errorf("the response is kept %v, want up to %v", ttl, responseTTL)
	}

	replay, token, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil || replay == nil || token != "" {
		t.Fatalf("Begin of a finished key: %+v, %q, %v; want its response", replay, token, err)
	}
	if !replay.Replayed || !replay.Final || replay.Status != resp.Status ||
		!reflect.DeepEqual(replay.Header, resp.Header) || !bytes.Equal(replay.Body, resp.Body) {
		t.Errorf("replay %+v; want Replayed, Final and byte for byte %+v", replay, resp)
	}
	if n := e.count(t, "*:lock"); n != 0 {
		t.Error("a replay took the lock")
	}

	if stored, token, err := e.cache.Begin(ctx, request("tenant-a", "k1", "fp-other"), lockTTL); !errors.Is(err, idempotency.ErrKeyReused) || stored != nil || token != "" {
		t.Errorf("Begin with another fingerprint: %+v, %q, %v; want ErrKeyReused", stored, token, err)
	}
	// Keys are per scope.
	if stored, token, err := e.cache.Begin(ctx, request("tenant-b", "k1", "fp-1"), lockTTL); err != nil || stored != nil || token == "" {
		t.Errorf("Begin of another scope's same key: %+v, %q, %v; want its own lock", stored, token, err)
	}
}

func TestCache_StaleOwnerCannotReleaseTheNewOwnersLock(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	_, old, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil {
		t.Fatal(err)
	}
	// The old owner's lock expires, as if it took too long...
	if err := e.redis.Del(ctx, e.only(t, "*:lock")).Err(); err != nil {
		t.Fatal(err)
	}
	// ...and a retry locks the key.
	_, current, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil || current == "" || current == old {
		t.Fatalf("Begin after the lock expired: %q, %v; want a lock of its own", current, err)
	}

	if err := e.cache.Finish(ctx, req, old, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.redis.Get(ctx, e.only(t, "*:lock")).Val(); got != current {
		t.Errorf("the lock holds %q after the old owner's Finish, want the current owner's", got)
	}
	if _, _, err := e.cache.Begin(ctx, req, lockTTL); !errors.Is(err, idempotency.ErrInFlight) {
		t.Errorf("Begin after the old owner's Finish: %v, want ErrInFlight (the current owner's lock)", err)
	}
}

func TestCache_FinishWithoutAResponseOnlyReleases(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	_, token, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil {
		t.Fatal(err)
	}
	// No final answer (a refusal, an outcome unknown): nothing to replay.
	if err := e.cache.Finish(ctx, req, token, nil); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "*:response"); n != 0 {
		t.Errorf("%d responses stored by a Finish without one", n)
	}
	stored, again, err := e.cache.Begin(ctx, req, lockTTL)
	if err != nil || stored != nil || again == "" {
		t.Errorf("Begin after a Finish without a response: %+v, %q, %v; want the lock again", stored, again, err)
	}
}

func TestCache_RedisDownFailsAndTheBreakerThenAnswersAtOnce(t *testing.T) {
	// A port nobody listens on: Redis is down.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1}) // fail fast: the breaker is the subject
	t.Cleanup(func() { rdb.Close() })
	cache, cmds := newCache(t, rdb)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	resp := &idempotency.Response{Status: 201, Body: []byte("{}"), Final: true}

	// Failures the caller goes on without: not answers about the key.
	calls := []func() error{
		func() error { _, _, err := cache.Begin(ctx, req, lockTTL); return err },
		func() error { return cache.Finish(ctx, req, "token", resp) },
		func() error { _, _, err := cache.Begin(ctx, req, lockTTL); return err },
	}
	for i, call := range calls {
		err := call()
		if err == nil || errors.Is(err, idempotency.ErrInFlight) || errors.Is(err, idempotency.ErrKeyReused) || errors.Is(err, resilience.ErrBreakerOpen) {
			t.Fatalf("call %d with Redis down: %v; want Redis's error", i, err)
		}
	}
	if sent := cmds.take(); len(sent) != len(calls) {
		t.Fatalf("commands tried %v, want one per call", sent)
	}

	// The breaker is open: calls fail without trying Redis.
	for i, call := range calls {
		if err := call(); !errors.Is(err, resilience.ErrBreakerOpen) {
			t.Errorf("call %d with the breaker open: %v, want ErrBreakerOpen", i, err)
		}
	}
	if sent := cmds.take(); len(sent) != 0 {
		t.Errorf("the open breaker let %v through to Redis", sent)
	}
}

func TestCache_BeginAndFinishAreOneRoundTripEach(t *testing.T) {
	e := newCacheEnv(t)
	ctx := context.Background()
	// Load the scripts and open the connection first: a server that lost
	// its script cache costs one EVAL more, once.
	warm := request("tenant-a", "warm", "fp")
	_, token, err := e.cache.Begin(ctx, warm, lockTTL)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cache.Finish(ctx, warm, token, &idempotency.Response{Status: 200, Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	e.commands.take()

	req := request("tenant-a", "k1", "fp-1")
	var lock string
	steps := []struct {
		name string
		do   func() error
	}{
		{"Begin taking the lock", func() (err error) { _, lock, err = e.cache.Begin(ctx, req, lockTTL); return err }},
		{"Begin refused in flight", func() error {
			if _, _, err := e.cache.Begin(ctx, req, lockTTL); !errors.Is(err, idempotency.ErrInFlight) {
				return err
			}
			return nil
		}},
		{"Finish releasing only", func() error { return e.cache.Finish(ctx, req, lock, nil) }},
		{"Begin taking the lock again", func() (err error) { _, lock, err = e.cache.Begin(ctx, req, lockTTL); return err }},
		{"Finish storing and releasing", func() error {
			return e.cache.Finish(ctx, req, lock, &idempotency.Response{Status: 201, Body: []byte("{}")})
		}},
		{"Begin replaying", func() error { _, _, err := e.cache.Begin(ctx, req, lockTTL); return err }},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if sent := e.commands.take(); len(sent) != 1 {
			t.Errorf("%s sent %v, want one round trip", step.name, sent)
		}
	}
}
