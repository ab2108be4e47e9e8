package testenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
)

// redisDatabases is how many logical databases Redis has by default: the
// number of tests of one binary that can hold a shared Redis at once.
const redisDatabases = 16

func startSharedRedis() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := startRedis(ctx, 0)
	if err != nil {
		env.redisErr = err
		return
	}
	env.redisURL = r.url
	env.redisDBs = make(chan int, redisDatabases)
	for i := range redisDatabases {
		env.redisDBs <- i
	}
}

// RedisURL returns the URL of a Redis logical database that only this test
// uses, on the shared container. It is flushed before the test gets it.
// With all databases taken, it waits for a test to finish.
func RedisURL(t testing.TB) string {
	t.Helper()
	env.redisOnce.Do(startSharedRedis)
	if env.redisErr != nil {
		t.Fatalf("testenv: %v", env.redisErr)
	}
	n := <-env.redisDBs
	u := *env.redisURL
	u.Path = "/" + strconv.Itoa(n)
	client := redis.NewClient(mustParseRedisURL(t, u.String()))
	defer client.Close()
	if err := client.FlushDB(context.Background()).Err(); err != nil {
		env.redisDBs <- n
		t.Fatalf("testenv: flush redis database %d: %v", n, err)
	}
	t.Cleanup(func() { env.redisDBs <- n })
	return u.String()
}

// Redis is a Redis container of one test's own, which it may stop, start
// and flush. Its address survives a restart.
type Redis struct {
	c   *tcredis.RedisContainer
	url *url.URL
}

// NewRedis starts a Redis container for this test alone, terminated when
// the test ends.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := StartRedis(ctx)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Terminate(context.Background()); err != nil {
			t.Logf("testenv: %v", err)
		}
	})
	return r
}

// StartRedis is NewRedis for programs that are not tests (the game day):
// the caller terminates the container.
func StartRedis(ctx context.Context) (*Redis, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	return startRedis(ctx, port)
}

// Terminate removes the container.
func (r *Redis) Terminate(ctx context.Context) error {
	if err := testcontainers.TerminateContainer(r.c, testcontainers.StopContext(ctx)); err != nil {
		return fmt.Errorf("terminate redis: %w", err)
	}
	return nil
}

// URL is the Redis URL of the container.
func (r *Redis) URL() string { return r.url.String() }

// Stop stops the container, as a crash or failover would.
func (r *Redis) Stop(ctx context.Context) error {
	timeout := time.Duration(0) // SIGKILL at once: an outage, not a goodbye
	return r.c.Stop(ctx, &timeout)
}

// Start starts a stopped container again, on the same port, empty (it
// persists nothing).
func (r *Redis) Start(ctx context.Context) error { return r.c.Start(ctx) }

// startRedis starts a Redis container. hostPort 0 lets Docker choose; a
// fixed port keeps the address stable across Stop and Start, which Docker
// would otherwise re-randomise.
func startRedis(ctx context.Context, hostPort int) (*Redis, error) {
	image := Image("TEST_REDIS_IMAGE", DefaultRedisImage)
	opts := []testcontainers.ContainerCustomizer{}
	if hostPort != 0 {
		opts = append(opts, testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{
				network.MustParsePort("6379/tcp"): {{HostPort: strconv.Itoa(hostPort)}},
			}
		}))
	}
	c, err := tcredis.Run(ctx, image, opts...)
	if c != nil && hostPort == 0 {
		track(c)
	}
	if err != nil {
		if c != nil && hostPort != 0 {
			_ = testcontainers.TerminateContainer(c)
		}
		return nil, fmt.Errorf(dockerHelp, image, err)
	}
	conn, err := c.ConnectionString(ctx)
	if err != nil {
		return nil, fmt.Errorf("redis connection string: %w", err)
	}
	u, err := url.Parse(conn)
	if err != nil {
		return nil, err
	}
	return &Redis{c: c, url: u}, nil
}

// FreePort returns a loopback port nothing listens on now. Another
// process may take it before the caller binds it; callers that can bind
// ":0" themselves should.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func mustParseRedisURL(t testing.TB, s string) *redis.Options {
	t.Helper()
	opts, err := redis.ParseURL(s)
	if err != nil {
		t.Fatalf("testenv: parse redis URL %s: %v", s, err)
	}
	return opts
}
