package idempotency

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/resiliencekit/payservice/internal/platform/resilience"
)

// Cache is the Redis fast path of idempotent requests: the completed
// responses of keys, and an in-flight lock per key that keeps duplicates
// of a request in progress away from Postgres. Every operation is bounded
// by a short timeout and guarded by a circuit breaker: while Redis is slow
// or down, callers learn at once and go on without it, to Postgres, which
// decides the same way, only more slowly.
type Cache struct {
	rdb     redis.UniversalClient
	prefix  string
	ttl     time.Duration
	timeout time.Duration
	breaker *resilience.Breaker
}

// CacheSettings configure a Cache.
type CacheSettings struct {
	// Prefix starts every Redis key, naming the service.
	Prefix string
	// ResponseTTL is how long a completed response is kept: the window
	// in which replays cost no Postgres query.
	ResponseTTL time.Duration
	// Timeout bounds one Redis round trip.
	Timeout time.Duration
}

// NewCache returns the fast path in rdb. breaker guards Redis: while it is
// open, the cache fails at once (judge Redis with RedisOutcome).
func NewCache(rdb redis.UniversalClient, s CacheSettings, breaker *resilience.Breaker) *Cache {
	return &Cache{rdb: rdb, prefix: s.Prefix, ttl: s.ResponseTTL, timeout: s.Timeout, breaker: breaker}
}

// RedisOutcome classifies Redis errors for a circuit breaker: any error is
// Redis failing (a missing key is not an error here).
func RedisOutcome(error) resilience.Outcome { return resilience.Failure }

// keys returns the Redis keys of a request's response and lock. Scope and
// key are length-prefixed, so that no choice of either spells another
// pair; the braces make both land on one Redis Cluster slot, as a script
// needs.
func (c *Cache) keys(req Request) []string {
	base := fmt.Sprintf("%s:{%d:%s:%d:%s}", c.prefix, len(req.Scope), req.Scope, len(req.Key), req.Key)
	return []string{base + ":response", base + ":lock"}
}

// stored is a completed response as the cache keeps it.
type stored struct {
	Fingerprint string      `json:"fingerprint"`
	Status      int         `json:"status"`
	Header      http.Header `json:"header"`
	Body        []byte      `json:"body"`
}

// begin answers a key's stored response, or takes its in-flight lock, in
// one round trip. The lock's value is its owner's token.
var begin = redis.NewScript(`
local r = redis.call("GET", KEYS[1])
if r then return {1, r} end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then return {2} end
return {3}`)

// finish stores a completed response (ARGV[2], if any) and releases the
// lock if it is still the caller's (ARGV[1]), in one round trip: an owner
// whose lock expired, and whose key another request has since locked,
// must never delete the new owner's lock.
var finish = redis.NewScript(`
if ARGV[2] ~= "" then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) end
if ARGV[1] ~= "" and redis.call("GET", KEYS[2]) == ARGV[1] then redis.call("DEL", KEYS[2]) end
return 1`)

// Begin looks req's key up. If its response is stored, Begin returns it
// (Replayed), or ErrKeyReused if it was stored for another request. Else
// it takes the key's in-flight lock for lockTTL and returns its token, or
// ErrInFlight if another request holds it. Any other error is Redis
// failing: the caller goes on without the fast path.
func (c *Cache) Begin(ctx context.Context, req Request, lockTTL time.Duration) (*Response, string, error) {
	token := newToken()
	var out []any
	err := c.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = begin.Run(ctx, c.rdb, c.keys(req), token, lockTTL.Milliseconds()).Slice()
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("idempotency fast path: %w", err)
	}
	switch code, _ := out[0].(int64); code {
	case 2:
		return nil, token, nil
	case 3:
		return nil, "", ErrInFlight
	}
	raw, _ := out[1].(string)
	var s stored
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return nil, "", fmt.Errorf("idempotency fast path: stored response of %q: %w", req.Key, err)
	}
	if s.Fingerprint != req.Fingerprint {
		return nil, "", ErrKeyReused
	}
	return &Response{Status: s.Status, Header: s.Header, Body: s.Body, Replayed: true, Final: true}, "", nil
}

// Finish stores resp as req's completed response, if resp is not nil, and
// releases the lock of token, if any, in one round trip.
func (c *Cache) Finish(ctx context.Context, req Request, token string, resp *Response) error {
	var raw []byte
	if resp != nil {
		var err error
		raw, err = json.Marshal(stored{Fingerprint: req.Fingerprint, Status: resp.Status, Header: resp.Header, Body: resp.Body})
		if err != nil {
			return err
		}
	}
	return c.do(ctx, func(ctx context.Context) error {
		return finish.Run(ctx, c.rdb, c.keys(req), token, raw, c.ttl.Milliseconds()).Err()
	})
}

// do runs one Redis operation under the breaker and the timeout. The
// timeout is inside: a slow Redis is Redis failing, while the caller's own
// cancellation (outside) is excluded from the breaker's counts.
func (c *Cache) do(ctx context.Context, op func(context.Context) error) error {
	return c.breaker.Execute(ctx, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		err := op(ctx)
		if errors.Is(err, redis.Nil) {
			return nil
		}
		return err
	})
}
