package testenv

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/lib/pq"
)

// SQLSpy sits between database/sql and the Postgres driver of a pool opened
// with OpenSpied. It records every statement the pool sends, so a test can
// count round trips and commits, and it can make a statement that ran on
// the server look failed to its caller (After): the lost answer of a
// committed write, which no real network produces on demand; or fail a
// statement before it is sent (Before), as a server refusing it would.
type SQLSpy struct {
	mu         sync.Mutex
	statements []Statement
	before     func(query string) error
	after      func(query string) error
}

// Statement is one statement sent to Postgres. BEGIN, COMMIT and ROLLBACK
// are recorded as statements too.
type Statement struct {
	Query string
	InTx  bool // sent inside an explicit transaction
}

// OpenSpied opens a pool on url whose statements s records. The pool is
// closed when the test ends.
func OpenSpied(t testing.TB, url string) (*sql.DB, *SQLSpy) {
	t.Helper()
	connector, err := pq.NewConnector(url)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	s := &SQLSpy{}
	pool := sql.OpenDB(spyConnector{connector, s})
	t.Cleanup(func() { pool.Close() })
	return pool, s
}

// After makes f run after each statement has run on the server, its rows
// read to the end; an error f returns replaces the statement's result.
// f == nil removes the hook.
func (s *SQLSpy) After(f func(query string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.after = f
}

// Before makes f run before each statement is sent; an error f returns
// is the statement's result, and the statement is not sent (nor
// recorded). f == nil removes the hook.
func (s *SQLSpy) Before(f func(query string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.before = f
}

func (s *SQLSpy) refuse(query string) error {
	s.mu.Lock()
	before := s.before
	s.mu.Unlock()
	if before == nil {
		return nil
	}
	return before(query)
}

// Reset forgets the statements recorded so far.
func (s *SQLSpy) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statements = nil
}

// Statements returns the statements recorded since the last Reset.
func (s *SQLSpy) Statements() []Statement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Statement(nil), s.statements...)
}

// Commits counts the commits among the statements: explicit COMMITs, and
// writes sent outside a transaction, which commit on their own.
func (s *SQLSpy) Commits() int {
	n := 0
	for _, st := range s.Statements() {
		q := strings.ToUpper(strings.TrimSpace(st.Query))
		switch {
		case q == "COMMIT":
			n++
		case !st.InTx && (strings.HasPrefix(q, "INSERT") || strings.HasPrefix(q, "UPDATE") ||
			strings.HasPrefix(q, "DELETE") || strings.HasPrefix(q, "WITH")):
			n++
		}
	}
	return n
}

func (s *SQLSpy) record(query string, inTx bool) func(string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statements = append(s.statements, Statement{Query: query, InTx: inTx})
	return s.after
}

type spyConnector struct {
	driver.Connector
	spy *SQLSpy
}

func (c spyConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &spyConn{Conn: conn, spy: c.spy}, nil
}

// spyConn wraps one driver connection. database/sql uses a connection from
// one goroutine at a time, so inTx needs no lock.
type spyConn struct {
	driver.Conn
	spy  *SQLSpy
	inTx bool
}

func (c *spyConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.spy.refuse(query); err != nil {
		return nil, err
	}
	res, err := c.Conn.(driver.ExecerContext).ExecContext(ctx, query, args)
	after := c.spy.record(query, c.inTx)
	if err == nil && after != nil {
		if herr := after(query); herr != nil {
			return nil, herr
		}
	}
	return res, err
}

func (c *spyConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := c.spy.refuse(query); err != nil {
		return nil, err
	}
	rows, err := c.Conn.(driver.QueryerContext).QueryContext(ctx, query, args)
	after := c.spy.record(query, c.inTx)
	if err != nil || after == nil {
		return rows, err
	}
	// Read to the end first: the statement has then completed (and,
	// outside a transaction, committed) before the hook decides.
	buffered, err := drain(rows)
	if err != nil {
		return nil, err
	}
	if herr := after(query); herr != nil {
		return nil, herr
	}
	return buffered, nil
}

func (c *spyConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	c.spy.record("BEGIN", false)
	if err != nil {
		return nil, err
	}
	c.inTx = true
	return &spyTx{Tx: tx, conn: c}, nil
}

func (c *spyConn) Ping(ctx context.Context) error { return c.Conn.(driver.Pinger).Ping(ctx) }

func (c *spyConn) ResetSession(ctx context.Context) error {
	return c.Conn.(driver.SessionResetter).ResetSession(ctx)
}

func (c *spyConn) IsValid() bool { return c.Conn.(driver.Validator).IsValid() }

func (c *spyConn) CheckNamedValue(nv *driver.NamedValue) error {
	return c.Conn.(driver.NamedValueChecker).CheckNamedValue(nv)
}

type spyTx struct {
	driver.Tx
	conn *spyConn
}

func (t *spyTx) Commit() error {
	err := t.Tx.Commit()
	t.conn.inTx = false
	after := t.conn.spy.record("COMMIT", true)
	if err == nil && after != nil {
		return after("COMMIT")
	}
	return err
}

func (t *spyTx) Rollback() error {
	err := t.Tx.Rollback()
	t.conn.inTx = false
	t.conn.spy.record("ROLLBACK", true)
	return err
}

// bufferedRows are rows read to the end, served from memory.
type bufferedRows struct {
	columns []string
	values  [][]driver.Value
}

func drain(rows driver.Rows) (*bufferedRows, error) {
	defer rows.Close()
	b := &bufferedRows{columns: rows.Columns()}
	for {
		dest := make([]driver.Value, len(b.columns))
		err := rows.Next(dest)
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		for i, v := range dest {
			if raw, ok := v.([]byte); ok { // the driver may reuse its buffer
				dest[i] = append([]byte(nil), raw...)
			}
		}
		b.values = append(b.values, dest)
	}
}

func (b *bufferedRows) Columns() []string { return b.columns }
func (b *bufferedRows) Close() error      { return nil }
func (b *bufferedRows) Next(dest []driver.Value) error {
	if len(b.values) == 0 {
		return io.EOF
	}
	copy(dest, b.values[0])
	b.values = b.values[1:]
	return nil
}
