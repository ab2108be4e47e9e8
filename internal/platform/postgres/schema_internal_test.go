package postgres

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"

	"github.com/lib/pq"
)

// A migration is applied again only when its connection failed, never
// when Postgres answered it with an error: that one would fail again.
func TestLostConnection_IsTheConnectionFailingNotPostgresAnswering(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: syscall.ECONNREFUSED.Error()}}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		// As goose wraps it when a Service has no ready endpoint yet.
		{"dial refused, wrapped", fmt.Errorf("apply migrations: failed to initialize: %w", refused), true},
		{"bad connection", driver.ErrBadConn, true},
		{"cut mid-stream", io.ErrUnexpectedEOF, true},
		{"server starting up", &pq.Error{Code: "57P03"}, true},
		{"server shutting down", &pq.Error{Code: "57P01"}, true},
		{"syntax error in a migration", &pq.Error{Code: "42601"}, false},
		{"duplicate object", fmt.Errorf("migration 3: %w", &pq.Error{Code: "42710"}), false},
		{"a missing migration file", errors.New("goose: missing migrations"), false},
		{"the caller gave up", context.Canceled, false},
	} {
		if got := lostConnection(tt.err); got != tt.want {
			t.Errorf("%s (%v): lostConnection = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestRetryUntil_RetriesUntilSuccessAndStopsAtAFinalError(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	calls := 0
	err := retryUntil(context.Background(), log, "test", func(context.Context) error {
		calls++
		if calls < 3 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("err %v after %d calls, want nil after 3", err, calls)
	}

	boom := errors.New("migration 2 failed")
	calls = 0
	err = retryUntil(context.Background(), log, "test", func(context.Context) error {
		calls++
		return final{boom}
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Errorf("err %v after %d calls, want %v after 1: a final error is not retried", err, calls, boom)
	}
}
