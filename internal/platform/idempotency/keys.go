package idempotency

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Querier is what *sql.DB, *sql.Conn and *sql.Tx have in common: a key's
// record is written with whichever the caller's own writes use.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Write is a domain's half of a statement that also writes a key's record,
// so that the two commit together or not at all, in one round trip. SQL is
// one data-modifying statement (INSERT, UPDATE or DELETE) with parameters
// $1 to $n taken from Args. It may read the key's record, written just
// before it in the same statement, as the CTE the method names (claimed,
// completed or abandoned: one row when the key's write happened, none
// when it did not), and it must change nothing when that CTE is empty.
type Write struct {
	SQL  string
	Args []any
}

// with composes WITH <name> AS (<keys>), resource AS (<w.SQL>) <tail>,
// numbering the key statement's parameters after w's. keys and tail write
// their parameters as $k1, $k2, ...
func (w Write) with(name, keys, tail string, keyArgs ...any) (string, []any) {
	n := len(w.Args)
	renumber := func(s string) string {
		for i := len(keyArgs); i >= 1; i-- { // $k10 before $k1
			s = strings.ReplaceAll(s, fmt.Sprintf("$k%d", i), fmt.Sprintf("$%d", n+i))
		}
		return s
	}
	query := "WITH " + name + " AS (" + renumber(keys) + "), resource AS (" + w.SQL + ") " + renumber(tail)
	return query, append(append(make([]any, 0, n+len(keyArgs)), w.Args...), keyArgs...)
}

// Keys are the durable records of idempotency keys, in the table
// idempotency_keys (Migrations).
type Keys struct {
	// Lease is how long a claim holds a key before another request may
	// take it over: it must outlast everything a request can still do.
	Lease   time.Duration
	Metrics *Metrics
}

// Claim is a key this process holds: it drives the key's work, then
// completes, releases or abandons it. Its token fences every write.
type Claim struct {
	Request
	Kind       string // what the work makes, for its reconciler
	ResourceID string // the id of what it makes
	Token      string
	// New is true when the key was new and the claim created its
	// resource; false when the claim took over pending work whose lease
	// had expired, to resume it.
	New bool
	// At is when the claim was made (or the key taken), by the
	// database's clock: a new resource's creation time, and the base of
	// the times the holder writes.
	At time.Time
}

// Claim takes req's key for work of kind, making resourceID:
//
//   - a new key: its record is inserted under a lease for a fresh token,
//     in one statement with create, which inserts the resource when the
//     CTE "claimed" has a row; the claim is New;
//   - a key naming pending work of the same request whose lease has
//     expired (its holder gave up or died): the lease is taken over and the
//     attempt recorded; the claim resumes the resource of ResourceID;
//   - a key whose work is complete: its stored response, Replayed, and no
//     claim;
//   - otherwise ErrInFlight (another request holds it) or ErrKeyReused
//     (the key was used for another request).
//
// Of any number of concurrent claims on one key, at most one gets it. On
// an error other than those two, the claim may have been made and only its
// answer lost: the returned Claim then names the attempt, for Unclaim.
func (k *Keys) Claim(ctx context.Context, q Querier, req Request, kind, resourceID string, create Write) (Claim, *Response, error) {
	c := Claim{Request: req, Kind: kind, ResourceID: resourceID, Token: newToken(), New: true}
	// A key abandoned between our statements is free again: try again.
	for range 3 {
		query, args := create.with("claimed", `
			INSERT INTO idempotency_keys (scope, key, fingerprint, kind, resource_id, lease_token, lease_expires_at)
			VALUES ($k1, $k2, $k3, $k4, $k5, $k6, now() + $k7 * interval '1 millisecond')
			ON CONFLICT (scope, key) DO NOTHING
			RETURNING created_at`,
			`SELECT created_at FROM claimed`,
			req.Scope, req.Key, req.Fingerprint, kind, resourceID, c.Token, k.Lease.Milliseconds())
		err := q.QueryRowContext(ctx, query, args...).Scan(&c.At)
		if err == nil {
			k.Metrics.Observe(OutcomeNew)
			return c, nil, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return c, nil, fmt.Errorf("claim key %q: %w", req.Key, err)
		}

		resumed := c
		resumed.New = false
		err = q.QueryRowContext(ctx, `
			UPDATE idempotency_keys
			SET lease_token = $5, lease_expires_at = now() + $6 * interval '1 millisecond', attempted_at = now()
			WHERE scope = $1 AND key = $2 AND fingerprint = $3 AND kind = $4 AND response_status IS NULL
			  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
			RETURNING resource_id, now()`,
			req.Scope, req.Key, req.Fingerprint, kind, c.Token, k.Lease.Milliseconds()).Scan(&resumed.ResourceID, &resumed.At)
		if err == nil {
			k.Metrics.Observe(OutcomeNew)
			return resumed, nil, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return resumed, nil, fmt.Errorf("take over key %q: %w", req.Key, err)
		}

		rec, err := k.read(ctx, q, req)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			continue
		case err != nil:
			return Claim{}, nil, err
		case rec.response == nil && rec.leaseActive, rec.response == nil && rec.fingerprint == req.Fingerprint:
			// Held, or taken over by another request between our
			// statements: that one drives it now.
			k.Metrics.Observe(OutcomeInFlight)
			return Claim{}, nil, ErrInFlight
		case rec.fingerprint != req.Fingerprint:
			k.Metrics.Observe(OutcomeMismatch)
			return Claim{}, nil, ErrKeyReused
		}
		k.Metrics.Observe(OutcomeReplay)
		return Claim{}, rec.response, nil
	}
	return Claim{}, nil, fmt.Errorf("claim key %q: its record kept disappearing", req.Key)
}

// record is a key's record as read.
type record struct {
	fingerprint string
	leaseActive bool
	holder      bool      // the lease is the reader's token's
	idle        bool      // attempted long enough ago (Complete's condition)
	response    *Response // nil while the work is pending
}

// read returns the key's record, with sql.ErrNoRows if there is none.
func (k *Keys) read(ctx context.Context, q Querier, req Request) (record, error) {
	return k.readAs(ctx, q, req, "", 0)
}

func (k *Keys) readAs(ctx context.Context, q Querier, req Request, token string, idleFor time.Duration) (record, error) {
	var (
		rec    record
		status sql.NullInt64
		header []byte
		body   []byte
	)
	err := q.QueryRowContext(ctx, `
		SELECT fingerprint, coalesce(lease_expires_at > now(), false), coalesce(lease_token = $3, false),
		       attempted_at <= now() - $4 * interval '1 millisecond',
		       response_status, response_header, response_body
		FROM idempotency_keys WHERE scope = $1 AND key = $2`,
		req.Scope, req.Key, token, idleFor.Milliseconds()).Scan(
		&rec.fingerprint, &rec.leaseActive, &rec.holder, &rec.idle, &status, &header, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return record{}, err
	}
	if err != nil {
		return record{}, fmt.Errorf("read key %q: %w", req.Key, err)
	}
	if status.Valid {
		rec.response = &Response{Status: int(status.Int64), Body: body, Replayed: true, Final: true}
		if len(header) > 0 {
			if err := json.Unmarshal(header, &rec.response.Header); err != nil {
				return record{}, fmt.Errorf("read key %q: response header: %w", req.Key, err)
			}
		}
	}
	return rec, nil
}

// Complete stores resp as the key's final answer and releases the lease,
// in one statement with update, which changes the resource when the CTE
// "completed" has a row. It is fenced: it completes the key only while c's
// token holds the lease, checked in the statement, under the row's lock.
// With idleFor, it also requires the work's last attempt to be at least
// that old (for a verdict resting on an absence, which only time makes
// final, and which an attempt since would void).
//
// It returns nil once it has completed the key. If the key was complete
// already (a retry that took over completed it), it returns that stored
// response, Replayed: the work's outcome is the same. Otherwise
// ErrLeaseLost or ErrAttemptTooRecent, and nothing is written.
func (k *Keys) Complete(ctx context.Context, q Querier, c Claim, resp Response, idleFor time.Duration, update Write) (*Response, error) {
	header, err := json.Marshal(resp.Header)
	if err != nil {
		return nil, fmt.Errorf("complete key %q: %w", c.Key, err)
	}
	body := resp.Body
	if body == nil {
		body = []byte{} // lib/pq sends nil as NULL, which a final answer may not have
	}
	query, args := update.with("completed", `
		UPDATE idempotency_keys
		SET response_status = $k4, response_header = $k5, response_body = $k6,
		    lease_token = NULL, lease_expires_at = NULL, completed_at = now()
		WHERE scope = $k1 AND key = $k2 AND lease_token = $k3 AND response_status IS NULL
		  AND attempted_at <= now() - $k7 * interval '1 millisecond'
		RETURNING 1`,
		`SELECT count(*) FROM completed`,
		c.Scope, c.Key, c.Token, resp.Status, string(header), body, idleFor.Milliseconds())
	var n int
	if err := q.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		return nil, fmt.Errorf("complete key %q: %w", c.Key, err)
	}
	if n == 1 {
		return nil, nil
	}
	// Nothing written: say why.
	rec, err := k.readAs(ctx, q, c.Request, c.Token, idleFor)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("complete key %q: %w", c.Key, ErrLeaseLost)
	case err != nil:
		return nil, err
	case rec.response != nil:
		return rec.response, nil
	case !rec.holder:
		return nil, fmt.Errorf("complete key %q: %w", c.Key, ErrLeaseLost)
	case !rec.idle:
		return nil, fmt.Errorf("complete key %q: %w", c.Key, ErrAttemptTooRecent)
	}
	// Raced with a change we cannot see any more; the caller retries later.
	return nil, fmt.Errorf("complete key %q: %w", c.Key, ErrLeaseLost)
}

// Release gives up c's lease, leaving the work pending, so that a retry
// or a reconciler can take it at once instead of waiting for the lease to
// expire. checked records that a reconciler looked and left it: its scans
// then take it after the keys it has not looked at. ErrLeaseLost if the
// lease is not c's any more.
func (k *Keys) Release(ctx context.Context, q Querier, c Claim, checked bool) error {
	res, err := q.ExecContext(ctx, `
		UPDATE idempotency_keys
		SET lease_token = NULL, lease_expires_at = NULL, checked_at = CASE WHEN $4 THEN now() ELSE checked_at END
		WHERE scope = $1 AND key = $2 AND lease_token = $3`, c.Scope, c.Key, c.Token, checked)
	return fenced("release key", c.Key, res, err)
}

// Abandon deletes the key's record, in one statement with remove, which
// deletes the resource when the CTE "abandoned" has a row, freeing the key
// for a new request. It is for work that certainly never happened: the
// caller created the resource with this claim and never started the side
// effect. ErrLeaseLost if the lease is not c's any more.
func (k *Keys) Abandon(ctx context.Context, q Querier, c Claim, remove Write) error {
	query, args := remove.with("abandoned", `
		DELETE FROM idempotency_keys
		WHERE scope = $k1 AND key = $k2 AND lease_token = $k3 AND resource_id = $k4 AND response_status IS NULL
		RETURNING resource_id`,
		`SELECT count(*) FROM abandoned`,
		c.Scope, c.Key, c.Token, c.ResourceID)
	var n int
	if err := q.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		return fmt.Errorf("abandon key %q: %w", c.Key, err)
	}
	if n == 0 {
		return fmt.Errorf("abandon key %q: %w", c.Key, ErrLeaseLost)
	}
	return nil
}

// Unclaim undoes a Claim whose answer was lost (it returned an error, so
// the caller does not know whether it holds the key): it abandons the key
// if the claim would have created it (c.New), and releases it if the claim
// would have taken it over, since a record that existed before may stand
// for work an earlier holder started. Both are fenced by the claim's
// token, so if the claim never landed it changes nothing. It is safe only
// because the caller has done nothing under the claim.
func (k *Keys) Unclaim(ctx context.Context, q Querier, c Claim, remove Write) error {
	var err error
	if c.New {
		err = k.Abandon(ctx, q, c, remove)
	} else {
		err = k.Release(ctx, q, c, false)
	}
	if errors.Is(err, ErrLeaseLost) {
		return nil // the claim never landed, or was taken over since
	}
	return err
}

// Stale returns up to limit keys of kind whose work is pending, which
// nobody holds, and whose last attempt is older than age: those a
// reconciler never looked at first, oldest attempt first, then those it
// looked at longest ago. They are not claimed: Take one to act on it.
func (k *Keys) Stale(ctx context.Context, q Querier, kind string, age time.Duration, limit int) ([]Claim, error) {
	rows, err := q.QueryContext(ctx, `
		SELECT scope, key, fingerprint, resource_id, created_at FROM idempotency_keys
		WHERE kind = $1 AND response_status IS NULL AND attempted_at < now() - $2 * interval '1 millisecond'
		  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
		ORDER BY checked_at NULLS FIRST, attempted_at
		LIMIT $3`, kind, age.Milliseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("list stale %s keys: %w", kind, err)
	}
	defer rows.Close()
	var stale []Claim
	for rows.Next() {
		c := Claim{Kind: kind}
		if err := rows.Scan(&c.Scope, &c.Key, &c.Fingerprint, &c.ResourceID, &c.At); err != nil {
			return nil, fmt.Errorf("list stale %s keys: %w", kind, err)
		}
		stale = append(stale, c)
	}
	return stale, rows.Err()
}

// Backlog counts kind's pending keys, stale or not, and ages their oldest
// attempt (0 if none) by the database's clock, which every replica
// shares. The pending keys' partial index serves it: its cost is the
// backlog's size, not the table's.
func (k *Keys) Backlog(ctx context.Context, q Querier, kind string) (pending int, oldest time.Duration, err error) {
	var seconds float64
	err = q.QueryRowContext(ctx, `
		SELECT count(*), coalesce(extract(epoch FROM now() - min(attempted_at)), 0)
		FROM idempotency_keys WHERE kind = $1 AND response_status IS NULL`, kind).Scan(&pending, &seconds)
	if err != nil {
		return 0, 0, fmt.Errorf("backlog of %s keys: %w", kind, err)
	}
	return pending, time.Duration(seconds * float64(time.Second)), nil
}

// Take takes the lease of a pending key nobody holds, without recording an
// attempt: for a reconciler, which only looks the work's outcome up. It
// sets c's token and At; ErrLeaseLost if another holds the key or it is
// complete.
func (k *Keys) Take(ctx context.Context, q Querier, c *Claim) error {
	c.Token = newToken()
	err := q.QueryRowContext(ctx, `
		UPDATE idempotency_keys
		SET lease_token = $3, lease_expires_at = now() + $4 * interval '1 millisecond'
		WHERE scope = $1 AND key = $2 AND response_status IS NULL
		  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
		RETURNING now()`,
		c.Scope, c.Key, c.Token, k.Lease.Milliseconds()).Scan(&c.At)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("take key %q: %w", c.Key, ErrLeaseLost)
	}
	if err != nil {
		return fmt.Errorf("take key %q: %w", c.Key, err)
	}
	return nil
}

// Exists reports whether req's key has a record. A service shedding load
// asks it first: a key that has one may need no work at all (a replay).
func (k *Keys) Exists(ctx context.Context, q Querier, req Request) (bool, error) {
	var exists bool
	err := q.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2)`,
		req.Scope, req.Key).Scan(&exists)
	if err != nil {
		return false, fmt.Errorf("look key %q up: %w", req.Key, err)
	}
	return exists, nil
}

// fenced turns a fenced statement's result into ErrLeaseLost when it
// changed nothing.
func fenced(what, key string, res sql.Result, err error) error {
	if err != nil {
		return fmt.Errorf("%s %q: %w", what, key, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("%s %q: %w", what, key, err)
	} else if n == 0 {
		return fmt.Errorf("%s %q: %w", what, key, ErrLeaseLost)
	}
	return nil
}

// newToken returns 128 random bits in hex.
func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}
