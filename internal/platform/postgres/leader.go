package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
)

// Leader elects one process among the replicas to do a singleton job (a
// reconciler, a scheduler), with a Postgres session advisory lock held on a dedicated
// connection. Postgres releases the lock when that connection ends — the
// process crashes, the network drops — so a dead leader never blocks the
// others, and no lease timing is involved.
//
// A Leader is used by one goroutine.
type Leader struct {
	pool *sql.DB
	key  int64
	conn *sql.Conn // non-nil while leading
}

// NewLeader returns a contender for the advisory lock key.
func NewLeader(pool *sql.DB, key int64) *Leader {
	return &Leader{pool: pool, key: key}
}

// Lead reports whether this process leads, trying to become leader if it
// does not. A leader checks that its connection, and so its lock, is still
// alive; if not, it steps down and tries again.
func (l *Leader) Lead(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		// Our own cancellation says nothing about the session. Check
		// nothing: a query under a cancelled context may make the driver
		// close the connection, and Postgres frees a dead session's lock
		// only some time later. Resign gives the lock up at once.
		return l.conn != nil, fmt.Errorf("leader check: %w", err)
	}
	if l.conn != nil {
		if err := l.conn.PingContext(ctx); err == nil {
			return true, nil
		}
		// The session looks dead. Discard the connection rather than
		// return it to the pool: if it lived after all, a pooled session
		// would hold the lock forever and nobody could ever lead again.
		l.discard()
	}
	conn, err := l.pool.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("leader election: %w", err)
	}
	var locked bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, l.key).Scan(&locked); err != nil {
		conn.Close()
		return false, fmt.Errorf("leader election: %w", err)
	}
	if !locked {
		conn.Close()
		return false, nil
	}
	l.conn = conn
	return true, nil
}

// Resign gives up the lock, if held.
func (l *Leader) Resign(ctx context.Context) error {
	if l.conn == nil {
		return nil
	}
	_, err := l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	// Closing returns the connection to the pool, where it may live on:
	// unlock explicitly first, and if that failed, discard the connection.
	if err != nil {
		l.discard()
		return fmt.Errorf("resign leadership: %w", err)
	}
	l.conn.Close()
	l.conn = nil
	return nil
}

// discard closes the leader's connection for good, never returning it to
// the pool, so that Postgres ends the session and frees the lock with it.
func (l *Leader) discard() {
	// Raw returning driver.ErrBadConn makes database/sql close the
	// underlying connection when it is released.
	_ = l.conn.Raw(func(any) error { return driver.ErrBadConn })
	l.conn.Close()
	l.conn = nil
}
