package redisclient

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// dialCounter is a go-redis hook that counts a client's dials, each
// attempt of its dial retry loop included.
type dialCounter struct{ n atomic.Int64 }

func (d *dialCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.n.Add(1)
		return next(ctx, network, addr)
	}
}

func (d *dialCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (d *dialCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func TestNew_DialsOnceWhenRedisIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "redis://" + ln.Addr().String() + "/0"
	ln.Close() // nothing listens: every dial is refused at once

	ours, err := New(Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opts.MaxRetries = -1 // as ours: only the dial retries differ
	tests := []struct {
		name      string
		client    *redis.Client
		wantDials int64 // per failed operation
	}{
		{"New", ours, 1},
		// The baseline shows that the hook sees every dial of a retry loop.
		{"go-redis's default dial retries", redis.NewClient(opts), 5},
	}
	took := make([]time.Duration, len(tests))
	for i, tt := range tests {
		t.Cleanup(func() { tt.client.Close() })
		dials := &dialCounter{}
		tt.client.AddHook(dials)
		// Several operations: each dials anew, none reuses a failure.
		const ops = 3
		start := time.Now()
		for op := range ops {
			before := dials.n.Load()
			if err := tt.client.Ping(context.Background()).Err(); err == nil {
				t.Fatalf("%s: ping to a closed port succeeded", tt.name)
			}
			if n := dials.n.Load() - before; n != tt.wantDials {
				t.Errorf("%s: ping %d with Redis down dialed %d times, want %d", tt.name, op+1, n, tt.wantDials)
			}
		}
		took[i] = time.Since(start) / ops
	}
	// One dial also means none of the 100ms pauses go-redis's default
	// takes between dials. Compared in one run, so a slow machine slows
	// both.
	t.Logf("ping with Redis down: %s, %s with go-redis's default dial retries", took[0], took[1])
	if took[0] > took[1]/4 {
		t.Errorf("ping with Redis down took %s, against %s with 5 dials: it should fail on the first", took[0], took[1])
	}
}

// A Redis that accepts connections and then says nothing (a stalled
// server, or one restarting behind a proxy) must cost an operation no more
// than its deadline: the request falls back to Postgres at c.Timeout, not
// at go-redis's socket read timeout.
func TestNew_AStalledRedisCostsAnOperationItsDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() { // accepts, reads nothing, answers nothing, until the test ends
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }()
		}
	}()
	const timeout = 100 * time.Millisecond
	rdb, err := New(Config{URL: "redis://" + ln.Addr().String() + "/0", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	err = rdb.Get(ctx, "k").Err()
	took := time.Since(start)
	if err == nil {
		t.Fatal("a read from a server that never answers succeeded")
	}
	// The client's own socket timeout is 5s here: only the context's
	// deadline can end the read this early.
	if took > time.Second {
		t.Errorf("the operation took %v with a deadline of %v: the deadline did not bound the read (%v)", took, timeout, err)
	}
}

// lockedBuffer is a log destination that go-redis's goroutines may write
// to while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// With Redis down, go-redis logs each failed dial itself. Through
// UseLogger those lines are JSON like the service's own, at warn level
// and marked as go-redis's, not plain text on stderr.
func TestUseLogger_GoRedisLinesAreStructured(t *testing.T) {
	var logs lockedBuffer
	UseLogger(slog.New(slog.NewJSONHandler(&logs, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "redis://" + ln.Addr().String() + "/0"
	ln.Close() // nothing listens: the dial fails, and go-redis says so
	c, err := New(Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Fatal("ping to a closed port succeeded")
	}

	var dialLines int
	for line := range strings.Lines(logs.String()) {
		var entry struct {
			Level     string `json:"level"`
			Msg       string `json:"msg"`
			Component string `json:"component"`
		}
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("a log line that is not JSON: %q (%v)", line, err)
		}
		if entry.Component != "go-redis" || entry.Level != "WARN" {
			t.Errorf("line %q: want component go-redis at WARN", line)
		}
		if strings.Contains(entry.Msg, "failed to dial") {
			dialLines++
		}
	}
	if dialLines == 0 {
		t.Errorf("no line about the failed dial; logged:\n%s", logs.String())
	}
}
