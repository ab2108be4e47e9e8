package postgres_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/resiliencekit/payservice/internal/platform/postgres"
)

func TestRetryFailover_RetriesOnlyWhatDisqualifiesTheConnection(t *testing.T) {
	ctx := context.Background()
	calls := 0
	v, err := postgres.RetryFailover(ctx, func(context.Context) (int, error) {
		calls++
		if calls < 3 {
			return 0, &pq.Error{Code: "57P01"} // the primary shut down
		}
		return 7, nil
	})
	if v != 7 || err != nil || calls != 3 {
		t.Errorf("after two failovers: %d, %v in %d calls; want 7, nil in 3", v, err, calls)
	}

	calls = 0
	unique := &pq.Error{Code: "23505"}
	if _, err := postgres.RetryFailover(ctx, func(context.Context) (int, error) { calls++; return 0, unique }); !errors.Is(err, unique) || calls != 1 {
		t.Errorf("a unique violation: %v in %d calls; want it at once", err, calls)
	}
}

func TestRetryFailover_StopsWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	calls := 0
	start := time.Now()
	_, err := postgres.RetryFailover(ctx, func(context.Context) (int, error) {
		calls++
		return 0, &pq.Error{Code: "25006"}
	})
	if !postgres.Disqualifies(err) || calls < 2 {
		t.Errorf("%v in %d calls; want the last 25006 after a few attempts", err, calls)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("returned after %v, its context ended at 200ms", d)
	}
}

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{driver.ErrBadConn, true}, // lib/pq's report of a server's FATAL error
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{io.ErrUnexpectedEOF, true},
		{errors.New("pq: could not connect to any of the hosts"), true},
		{&pq.Error{Code: "25006"}, true},
		{&pq.Error{Code: "23505"}, false}, // the statement's own answer
		{context.DeadlineExceeded, false},
		{fmt.Errorf("settle: %w", context.Canceled), false},
		{nil, false},
	} {
		if got := postgres.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetryFailover_StopsAtAFinalError(t *testing.T) {
	leaseLost := errors.New("lease lost")
	calls := 0
	_, err := postgres.RetryFailover(context.Background(), func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 0, io.ErrUnexpectedEOF
		}
		return 0, fmt.Errorf("complete: %w", leaseLost)
	}, leaseLost)
	if !errors.Is(err, leaseLost) || calls != 2 {
		t.Errorf("%v after %d calls; want the final error on the second", err, calls)
	}
}
