package db

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
)

// Leader elects one process among the replicas to do a singleton job (the
// reconciler), with a Postgres session advisory lock held on a dedicated
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
	if l.conn != nil {
		if err := l.conn.PingContext(ctx); err == nil {
			return true, nil
		}
		l.conn.Close() // the lock died with the session
		l.conn = nil
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
		err = errors.Join(err, l.conn.Raw(func(any) error { return driver.ErrBadConn }))
	}
	l.conn.Close()
	l.conn = nil
	return err
}
