package resilience

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// ErrRateLimited means a call was not made because it would have exceeded
// a rate limit within the time the caller had.
var ErrRateLimited = errors.New("rate limited")

// KeyedLimiter gives every key (a client id, a remote address) its own
// token bucket: PerSecond tokens a second, up to Burst saved. It never
// waits: Allow answers at once, and a caller over its limit is told when to
// come back.
//
// Memory is bounded however many keys arrive. A bucket left alone for
// Burst/PerSecond is full again, indistinguishable from a new one, so
// evicting it loses nothing; and past MaxKeys the least recently used
// bucket goes. Keys are spread over shards, each with its own lock and
// least-recently-used list, so that eviction is O(1) and concurrent
// clients rarely contend.
type KeyedLimiter struct {
	limit    rate.Limit
	burst    int
	idle     time.Duration // after this long unused, a bucket is full again
	perShard int
	seed     maphash.Seed
	shards   [limiterShards]limiterShard
	now      func() time.Time

	rejected  prometheus.Counter
	evictions *prometheus.CounterVec
}

const limiterShards = 32

type limiterShard struct {
	mu      sync.Mutex
	entries map[string]*list.Element
	lru     list.List // of *limiterEntry, most recently used first
}

type limiterEntry struct {
	key    string
	bucket *rate.Limiter
	seen   time.Time
}

// LimiterSettings size a KeyedLimiter: each key may make PerSecond
// requests a second, and Burst at once; MaxKeys bounds the buckets kept.
type LimiterSettings struct {
	Name      string // a metric label
	PerSecond float64
	Burst     int
	MaxKeys   int
}

// NewKeyedLimiter returns a limiter named for its metrics.
func NewKeyedLimiter(s LimiterSettings, reg prometheus.Registerer) (*KeyedLimiter, error) {
	name, perSecond, burst, maxKeys := s.Name, s.PerSecond, s.Burst, s.MaxKeys
	if perSecond <= 0 || burst < 1 || maxKeys < limiterShards {
		return nil, fmt.Errorf("rate limiter %s: need a positive rate and burst and at least %d keys, got %g/s, %d, %d",
			name, limiterShards, perSecond, burst, maxKeys)
	}
	labels := prometheus.Labels{"name": name}
	l := &KeyedLimiter{
		limit:    rate.Limit(perSecond),
		burst:    burst,
		idle:     time.Duration(float64(burst) / perSecond * float64(time.Second)),
		perShard: maxKeys / limiterShards,
		seed:     maphash.MakeSeed(),
		now:      time.Now,
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ratelimit_rejections_total", Help: "Requests refused for being over their rate limit.", ConstLabels: labels,
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimit_evictions_total", Help: "Buckets dropped, by reason: idle (full again, nothing lost) or capacity (least recently used).", ConstLabels: labels,
		}, []string{"reason"}),
	}
	for i := range l.shards {
		l.shards[i].entries = make(map[string]*list.Element)
	}
	keys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ratelimit_keys", Help: "Buckets currently kept.", ConstLabels: labels,
	}, func() float64 { return float64(l.Len()) })
	if err := registerAll(reg, l.rejected, l.evictions, keys); err != nil {
		return nil, fmt.Errorf("rate limiter %s metrics: %w", name, err)
	}
	return l, nil
}

// WithClock replaces the clock, for tests. It returns l.
func (l *KeyedLimiter) WithClock(now func() time.Time) *KeyedLimiter {
	l.now = now
	return l
}

// Decision is the outcome of Allow, with what a client needs to pace itself.
type Decision struct {
	Allowed    bool
	Limit      int           // the bucket's size
	Remaining  int           // whole tokens left after this request
	Reset      time.Duration // until the bucket is full again
	RetryAfter time.Duration // when not allowed: until the next token
}

// Allow takes a token from key's bucket if it has one.
func (l *KeyedLimiter) Allow(key string) Decision {
	sh := l.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// The clock is read under the lock, so that the times a shard sees
	// never go back. Read before it, a call could reach the bucket after a
	// later one: x/time/rate then rewinds the bucket's last update and
	// credits the time between the two again, granting tokens it should
	// not; and the shard's least-recently-used order, which the idle
	// eviction trusts, would no longer follow the times in it.
	now := l.now()

	var e *limiterEntry
	if elem, ok := sh.entries[key]; ok {
		sh.lru.MoveToFront(elem)
		e = elem.Value.(*limiterEntry)
	} else {
		l.evict(sh, now)
		e = &limiterEntry{key: key, bucket: rate.NewLimiter(l.limit, l.burst)}
		sh.entries[key] = sh.lru.PushFront(e)
	}
	e.seen = now

	allowed := e.bucket.AllowN(now, 1)
	tokens := e.bucket.TokensAt(now)
	d := Decision{
		Allowed:   allowed,
		Limit:     l.burst,
		Remaining: max(0, int(tokens)),
		Reset:     l.durationFor(float64(l.burst) - tokens),
	}
	if !allowed {
		d.RetryAfter = l.durationFor(1 - tokens)
		l.rejected.Inc()
	}
	return d
}

// shard returns the shard that holds key's bucket.
func (l *KeyedLimiter) shard(key string) *limiterShard {
	return &l.shards[maphash.String(l.seed, key)%limiterShards]
}

// evict makes room for one more bucket in sh: first every bucket idle long
// enough to be full again, then, if the shard is still full, the least
// recently used. The caller holds sh.mu.
func (l *KeyedLimiter) evict(sh *limiterShard, now time.Time) {
	for back := sh.lru.Back(); back != nil; back = sh.lru.Back() {
		if e := back.Value.(*limiterEntry); now.Sub(e.seen) < l.idle {
			break
		}
		l.remove(sh, back, "idle")
	}
	if sh.lru.Len() >= l.perShard {
		l.remove(sh, sh.lru.Back(), "capacity")
	}
}

func (l *KeyedLimiter) remove(sh *limiterShard, elem *list.Element, reason string) {
	delete(sh.entries, elem.Value.(*limiterEntry).key)
	sh.lru.Remove(elem)
	l.evictions.WithLabelValues(reason).Inc()
}

// durationFor is how long the bucket takes to gain tokens.
func (l *KeyedLimiter) durationFor(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(tokens / float64(l.limit) * float64(time.Second))
}

// Len returns the number of buckets kept.
func (l *KeyedLimiter) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}

// SetHeaders writes the RateLimit-Limit, RateLimit-Remaining and
// RateLimit-Reset headers (IETF draft-ietf-httpapi-ratelimit-headers), and
// Retry-After when the request was refused. Times are whole seconds,
// rounded up: rounding down would invite a retry that is refused again.
func (d Decision) SetHeaders(h http.Header) {
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", strconv.Itoa(ceilSeconds(d.Reset)))
	if !d.Allowed {
		h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(d.RetryAfter))))
	}
}

func ceilSeconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }

// EgressLimiter paces calls to a dependency to its quota, such as a
// provider's requests per second. Unlike KeyedLimiter it waits for a
// token, but only as long as the caller's context allows: a call that
// could not start before its deadline fails at once with ErrRateLimited.
type EgressLimiter struct {
	bucket   *rate.Limiter
	rejected prometheus.Counter
}

// EgressSettings pace the calls to one dependency: PerSecond calls a
// second, with bursts of Burst.
type EgressSettings struct {
	Name      string // the dependency; a metric label
	PerSecond float64
	Burst     int
}

// NewEgressLimiter returns a limiter named for its metrics.
func NewEgressLimiter(s EgressSettings, reg prometheus.Registerer) (*EgressLimiter, error) {
	name, perSecond, burst := s.Name, s.PerSecond, s.Burst
	if perSecond <= 0 || burst < 1 {
		return nil, fmt.Errorf("egress limiter %s: need a positive rate and burst, got %g/s and %d", name, perSecond, burst)
	}
	e := &EgressLimiter{
		bucket: rate.NewLimiter(rate.Limit(perSecond), burst),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "egress_rate_limited_total",
			Help:        "Calls not made because the dependency's quota had no room before their deadline.",
			ConstLabels: prometheus.Labels{"name": name},
		}),
	}
	if err := reg.Register(e.rejected); err != nil {
		return nil, fmt.Errorf("egress limiter %s metrics: %w", name, err)
	}
	return e, nil
}

// Wait blocks until the call may go, or fails at once if it could not go
// before ctx's deadline.
func (e *EgressLimiter) Wait(ctx context.Context) error {
	if err := e.bucket.Wait(ctx); err != nil {
		e.rejected.Inc()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %w", ErrRateLimited, err)
	}
	return nil
}
