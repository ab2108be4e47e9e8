package postgres_test

import (
	"context"
	"errors"
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
