package postgres

import (
	"context"
	"database/sql/driver"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
	"go.opentelemetry.io/otel/trace"
)

// After a failover, the connections a pool holds are the problem: they
// point at the old primary. If it died, they fail once and lib/pq marks
// them broken. If it lives on demoted (now a standby, or fenced read-only),
// they keep working for reads and refuse every write with SQLSTATE 25006,
// and database/sql, which knows nothing of Postgres, would hand them out
// until DB_CONN_MAX_LIFETIME. A multi-host DATABASE_URL with
// target_session_attrs=read-write only helps new connections find the new
// primary; these old ones must go first.
//
// failoverConnector wraps every connection so that an error saying "this
// server can no longer take your writes" or "this server is going away"
// marks it for discarding: database/sql then closes it instead of reusing
// it, and the next statement opens a connection to whichever host is the
// primary now. The statement that met the error still fails: whether a
// write reached the old primary before it went away is not this layer's to
// guess. (The at-most-once design makes that retry the caller's: the same
// Idempotency-Key claims or replays the same record.)
//
// The same wrapper records the statements' spans when the pool is traced
// (tracing.go): it already sits where every statement passes.
type failoverConnector struct {
	driver.Connector
	tracer trace.Tracer // nil: no spans
}

func (c failoverConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &failoverConn{Conn: cn, tracer: c.tracer}, nil
}

// Disqualifies reports whether err means the connection it came from
// should not be used again: its server is read-only now (25006, a demoted
// primary), shutting down or crashed (57P01, 57P02, 57P03), or the
// connection itself failed (class 08).
func Disqualifies(err error) bool {
	if errors.Is(err, driver.ErrBadConn) {
		return true
	}
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) {
		return false
	}
	switch pqErr.Code {
	case "25006", "57P01", "57P02", "57P03":
		return true
	}
	return pqErr.Code.Class() == "08"
}

// Transient reports whether err leaves the outcome of a statement unknown
// for a reason that may pass: its connection failed or was cut (lib/pq
// reports a server's FATAL error as driver.ErrBadConn, a reset as a
// network error, a pool with no writable host as a connect error), or its
// server is read-only or going away (Disqualifies). An error Postgres
// answered for the statement itself (a constraint, a syntax error) and
// the end of the caller's context are not transient.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return Disqualifies(err)
	}
	return true
}

// RetryFailover runs op until it succeeds, fails with an error that is
// not Transient or is one of final, or ctx ends, waiting 50 ms, 100 ms,
// ... (at most 1 s) between attempts: time for a multi-host pool to find
// the promoted primary. It returns op's last result.
//
// Only for an op that is safe to repeat when its outcome is unknown: one
// whose repetition changes nothing (a write fenced by a token that also
// recognises its own earlier success). database/sql retries nothing of
// the kind, rightly: it cannot know which ops those are.
func RetryFailover[T any](ctx context.Context, op func(context.Context) (T, error), final ...error) (T, error) {
	delay := 50 * time.Millisecond
	for {
		v, err := op(ctx)
		if err == nil || !Transient(err) || ctx.Err() != nil || slices.ContainsFunc(final, func(f error) bool { return errors.Is(err, f) }) {
			return v, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		delay = min(2*delay, time.Second)
	}
}

// failoverConn is a lib/pq connection that remembers a disqualifying
// error. It forwards every interface of lib/pq's connection that
// database/sql uses.
type failoverConn struct {
	driver.Conn
	disqualified atomic.Bool
	tracer       trace.Tracer
}

func (c *failoverConn) note(err error) error {
	if err != nil && Disqualifies(err) {
		c.disqualified.Store(true)
	}
	return err
}

func (c *failoverConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	ctx, span := startSpan(ctx, c.tracer, query)
	res, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
	endSpan(span, err)
	return res, c.note(err)
}

func (c *failoverConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	ctx, span := startSpan(ctx, c.tracer, query)
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
	endSpan(span, err)
	return rows, c.note(err)
}

func (c *failoverConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, query)
	if err != nil {
		return nil, c.note(err)
	}
	_, execCtx := st.(driver.StmtExecContext)
	_, queryCtx := st.(driver.StmtQueryContext)
	if !execCtx || !queryCtx {
		return st, nil // lib/pq's COPY statement: it has no context methods to wrap
	}
	return &failoverStmt{Stmt: st, conn: c, query: query}, nil
}

func (c *failoverConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	spanCtx, span := startSpan(ctx, c.tracer, "BEGIN")
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(spanCtx, opts)
	endSpan(span, err)
	if err != nil {
		return nil, c.note(err)
	}
	return &failoverTx{Tx: tx, conn: c, ctx: ctx}, nil
}

func (c *failoverConn) Ping(ctx context.Context) error {
	return c.note(c.Conn.(driver.Pinger).Ping(ctx))
}

// ResetSession runs before a connection is reused: ErrBadConn makes
// database/sql discard it.
func (c *failoverConn) ResetSession(ctx context.Context) error {
	if c.disqualified.Load() {
		return driver.ErrBadConn
	}
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

// IsValid runs before a connection goes back to the pool.
func (c *failoverConn) IsValid() bool {
	return !c.disqualified.Load() && c.Conn.(driver.Validator).IsValid()
}

func (c *failoverConn) CheckNamedValue(nv *driver.NamedValue) error {
	return c.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

type failoverTx struct {
	driver.Tx
	conn *failoverConn
	// ctx is the one the transaction began with, the parent of the spans
	// of its end: driver.Tx's Commit and Rollback take no context.
	ctx context.Context
}

func (t *failoverTx) Commit() error   { return t.end("COMMIT", t.Tx.Commit) }
func (t *failoverTx) Rollback() error { return t.end("ROLLBACK", t.Tx.Rollback) }

func (t *failoverTx) end(op string, end func() error) error {
	_, span := startSpan(t.ctx, t.conn.tracer, op)
	err := end()
	endSpan(span, err)
	return t.conn.note(err)
}

type failoverStmt struct {
	driver.Stmt
	conn  *failoverConn
	query string // for its spans
}

func (s *failoverStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	ctx, span := startSpan(ctx, s.conn.tracer, s.query)
	res, err := s.Stmt.(driver.StmtExecContext).ExecContext(ctx, args)
	endSpan(span, err)
	return res, s.conn.note(err)
}

func (s *failoverStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	ctx, span := startSpan(ctx, s.conn.tracer, s.query)
	rows, err := s.Stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
	endSpan(span, err)
	return rows, s.conn.note(err)
}

// Compile-time checks: the wrapper offers what database/sql looks for.
var (
	_ driver.ExecerContext      = (*failoverConn)(nil)
	_ driver.QueryerContext     = (*failoverConn)(nil)
	_ driver.ConnPrepareContext = (*failoverConn)(nil)
	_ driver.ConnBeginTx        = (*failoverConn)(nil)
	_ driver.Pinger             = (*failoverConn)(nil)
	_ driver.SessionResetter    = (*failoverConn)(nil)
	_ driver.Validator          = (*failoverConn)(nil)
	_ driver.NamedValueChecker  = (*failoverConn)(nil)
	_ driver.StmtExecContext    = (*failoverStmt)(nil)
	_ driver.StmtQueryContext   = (*failoverStmt)(nil)
)
