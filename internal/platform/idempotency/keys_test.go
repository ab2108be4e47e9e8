package idempotency_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/postgres"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// thingsMigrations is the schema of a domain of the tests' own: the keys
// guard the making of "things", as a real domain's keys guard its rows.
var thingsMigrations = postgres.Migrations{Table: "goose_things_version", Files: fstest.MapFS{
	"00001_things.sql": {Data: []byte("-- +goose Up\nCREATE TABLE things (id text PRIMARY KEY, state text NOT NULL);\n-- +goose Down\nDROP TABLE things;\n")},
}}

const (
	kind  = "thing"
	lease = time.Minute
)

// The domain's halves of the key's statements.

func createThing(id string) idempotency.Write {
	return idempotency.Write{SQL: `INSERT INTO things (id, state) SELECT $1, 'pending' FROM claimed`, Args: []any{id}}
}

func finishThing(id, state string) idempotency.Write {
	return idempotency.Write{SQL: `UPDATE things SET state = $2 WHERE id = $1 AND EXISTS (SELECT 1 FROM completed)`, Args: []any{id, state}}
}

var removeThing = idempotency.Write{SQL: `DELETE FROM things WHERE id IN (SELECT resource_id FROM abandoned)`}

// keysEnv is a database migrated with the keys and the things, and Keys
// counting into a registry of the test's own.
type keysEnv struct {
	url  string
	db   *sql.DB
	keys *idempotency.Keys
	reg  *prometheus.Registry
}

func newKeysEnv(t *testing.T) *keysEnv {
	t.Helper()
	url := testenv.NewDatabase(t, idempotency.Migrations, thingsMigrations)
	// Room for the concurrent claims, the transaction holding them back
	// and the session watching them wait.
	db, err := postgres.Open(url, postgres.PoolConfig{MaxOpenConns: 32, MaxIdleConns: 32, ConnMaxLifetime: time.Minute, ConnMaxIdleTime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	reg := prometheus.NewRegistry()
	metrics, err := idempotency.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return &keysEnv{url: url, db: db, keys: &idempotency.Keys{Lease: lease, Metrics: metrics}, reg: reg}
}

func request(scope, key, fingerprint string) idempotency.Request {
	return idempotency.Request{Scope: scope, Key: key, Fingerprint: fingerprint}
}

// claimNew claims a new key for the thing id, and fails the test unless
// the claim made it.
func (e *keysEnv) claimNew(t *testing.T, req idempotency.Request, id string) idempotency.Claim {
	t.Helper()
	c, replay, err := e.keys.Claim(context.Background(), e.db, req, kind, id, createThing(id))
	if err != nil || replay != nil || !c.New {
		t.Fatalf("Claim of the new key %q: %+v, replay %+v, %v; want New", req.Key, c, replay, err)
	}
	return c
}

// keyRecord is a key's row, as the tests inspect it.
// Times are in microseconds since the epoch, so that records compare
// with ==.
type keyRecord struct {
	Fingerprint string
	ResourceID  string
	Token       sql.NullString
	LeaseActive bool
	AttemptedAt int64
	Checked     bool
	Status      sql.NullInt64
	CompletedAt sql.NullInt64
}

func (e *keysEnv) record(t *testing.T, req idempotency.Request) (keyRecord, bool) {
	t.Helper()
	var r keyRecord
	err := e.db.QueryRow(`
		SELECT fingerprint, resource_id, lease_token, coalesce(lease_expires_at > now(), false),
		       (extract(epoch FROM attempted_at) * 1000000)::bigint, checked_at IS NOT NULL,
		       response_status, (extract(epoch FROM completed_at) * 1000000)::bigint
		FROM idempotency_keys WHERE scope = $1 AND key = $2`, req.Scope, req.Key).Scan(
		&r.Fingerprint, &r.ResourceID, &r.Token, &r.LeaseActive, &r.AttemptedAt, &r.Checked, &r.Status, &r.CompletedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return keyRecord{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return r, true
}

// thing returns the state of the thing id, and whether it exists.
func (e *keysEnv) thing(t *testing.T, id string) (string, bool) {
	t.Helper()
	var state string
	err := e.db.QueryRow(`SELECT state FROM things WHERE id = $1`, id).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return state, true
}

func (e *keysEnv) things(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow(`SELECT count(*) FROM things`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// exec runs SQL standing in for time passing or another session.
func (e *keysEnv) exec(t *testing.T, query string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// expireLease makes the key's lease run out, as time would.
func (e *keysEnv) expireLease(t *testing.T, req idempotency.Request) {
	t.Helper()
	e.exec(t, `UPDATE idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE scope = $1 AND key = $2`, req.Scope, req.Key)
}

// ageAttempt makes the key's last attempt ago old.
func (e *keysEnv) ageAttempt(t *testing.T, req idempotency.Request, ago time.Duration) {
	t.Helper()
	e.exec(t, `UPDATE idempotency_keys SET attempted_at = now() - $3 * interval '1 millisecond' WHERE scope = $1 AND key = $2`,
		req.Scope, req.Key, ago.Milliseconds())
}

// outcomes reads idempotency_total by outcome.
func (e *keysEnv) outcomes(t *testing.T) map[string]float64 {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "idempotency_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// waitForLockWaiters returns once n sessions of this database wait for a
// lock: the statements the test holds back are all on the server.
func waitForLockWaiters(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var waiting int
		if err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions wait for a lock, want %d", waiting, n)
		}
	}
}

func TestKeys_ClaimOfANewKeyWritesRecordAndResourceInOneStatement(t *testing.T) {
	e := newKeysEnv(t)
	db, spy := testenv.OpenSpied(t, e.url)
	req := request("tenant-a", "k1", "fp-1")

	c, replay, err := e.keys.Claim(context.Background(), db, req, kind, "thing-1", createThing("thing-1"))
	if err != nil || replay != nil {
		t.Fatalf("Claim: %v, replay %+v", err, replay)
	}
	if !c.New || c.Token == "" || c.At.IsZero() || c.ResourceID != "thing-1" || c.Kind != kind || c.Request != req {
		t.Errorf("Claim = %+v; want New, a token, At, and the request, kind and resource it was given", c)
	}
	// Both rows or neither: one statement, committed once, no transaction.
	statements := spy.Statements()
	if len(statements) != 1 || statements[0].InTx || spy.Commits() != 1 {
		t.Errorf("the claim sent %d statements (%+v) with %d commits; want one statement committing record and resource together",
			len(statements), statements, spy.Commits())
	}
	if state, ok := e.thing(t, "thing-1"); !ok || state != "pending" {
		t.Errorf("thing-1: %q, exists %v; want it pending", state, ok)
	}
	rec, ok := e.record(t, req)
	if !ok || rec.Fingerprint != "fp-1" || rec.ResourceID != "thing-1" || rec.Token.String != c.Token || !rec.LeaseActive || rec.Status.Valid {
		t.Errorf("record %+v, exists %v; want it pending, held by the claim's token, naming thing-1", rec, ok)
	}
}

func TestKeys_ConcurrentClaimsOfOneKeyAdmitExactlyOne(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")

	// Hold every claim back at the things table, then let them all go at
	// once: they race on the key on the server, not in the test's timing.
	gate, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Rollback()
	if _, err := gate.Exec(`LOCK TABLE things IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	const n = 20
	claims := make([]idempotency.Claim, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("thing-%d", i)
			claims[i], _, errs[i] = e.keys.Claim(ctx, e.db, req, kind, id, createThing(id))
		})
	}
	waitForLockWaiters(t, e.db, n)
	if err := gate.Commit(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	var winner idempotency.Claim
	won := 0
	for i := range n {
		switch {
		case errs[i] == nil && claims[i].New:
			won++
			winner = claims[i]
		case !errors.Is(errs[i], idempotency.ErrInFlight):
			t.Errorf("claim %d: %+v, %v; want New or ErrInFlight", i, claims[i], errs[i])
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent claims got the key, want exactly 1", won, n)
	}
	if got := e.things(t); got != 1 {
		t.Errorf("%d things made, want 1 (the winner's)", got)
	}
	if _, ok := e.thing(t, winner.ResourceID); !ok {
		t.Errorf("the winner's thing %s does not exist", winner.ResourceID)
	}
	if got := e.outcomes(t); got[idempotency.OutcomeNew] != 1 || got[idempotency.OutcomeInFlight] != n-1 {
		t.Errorf("outcomes %v, want 1 new and %d in_flight", got, n-1)
	}

	// Keys are per scope: another client's identical key is its own.
	other := e.claimNew(t, request("tenant-b", "k1", "fp-1"), "thing-b")
	if other.Token == winner.Token {
		t.Error("the other scope's claim shares the first scope's lease")
	}
}

func TestKeys_ExpiredLeaseIsTakenOverByExactlyOneRetry(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	first := e.claimNew(t, req, "thing-1")
	e.expireLease(t, req)
	e.ageAttempt(t, req, time.Hour)

	// Hold the key's row, so that every retry's takeover waits for it,
	// then let them all go at once.
	gate, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Rollback()
	if _, err := gate.Exec(`SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE`, req.Scope, req.Key); err != nil {
		t.Fatal(err)
	}
	const n = 10
	claims := make([]idempotency.Claim, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Each retry would make a thing of its own were the key new.
			id := fmt.Sprintf("retry-%d", i)
			claims[i], _, errs[i] = e.keys.Claim(ctx, e.db, req, kind, id, createThing(id))
		})
	}
	waitForLockWaiters(t, e.db, n)
	if err := gate.Commit(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	var winner idempotency.Claim
	won := 0
	for i := range n {
		switch {
		case errs[i] == nil:
			won++
			winner = claims[i]
		case !errors.Is(errs[i], idempotency.ErrInFlight):
			t.Errorf("retry %d: %v; want a takeover or ErrInFlight", i, errs[i])
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d retries took the expired key over, want exactly 1", won, n)
	}
	if winner.New || winner.ResourceID != first.ResourceID || winner.Token == first.Token || winner.At.IsZero() {
		t.Errorf("takeover %+v; want not New, resuming %s under a new token, with At", winner, first.ResourceID)
	}
	rec, _ := e.record(t, req)
	if rec.Token.String != winner.Token || !rec.LeaseActive || rec.AttemptedAt != winner.At.UnixMicro() {
		t.Errorf("record %+v; want the winner's active lease and its attempt recorded at its At (%v)", rec, winner.At)
	}
	if got := e.things(t); got != 1 {
		t.Errorf("%d things, want only the first claim's", got)
	}
}

func TestKeys_ClaimWithAnotherFingerprintIsRefused(t *testing.T) {
	cases := []struct {
		name  string
		state func(t *testing.T, e *keysEnv, c idempotency.Claim)
		want  error
	}{{
		// While held, the key is busy whatever it is for: the same answer
		// as the fast path's lock, which knows no fingerprint.
		name:  "held",
		state: func(*testing.T, *keysEnv, idempotency.Claim) {},
		want:  idempotency.ErrInFlight,
	}, {
		name:  "expired",
		state: func(t *testing.T, e *keysEnv, c idempotency.Claim) { e.expireLease(t, c.Request) },
		want:  idempotency.ErrKeyReused,
	}, {
		name: "released",
		state: func(t *testing.T, e *keysEnv, c idempotency.Claim) {
			if err := e.keys.Release(context.Background(), e.db, c, false); err != nil {
				t.Fatal(err)
			}
		},
		want: idempotency.ErrKeyReused,
	}, {
		name: "complete",
		state: func(t *testing.T, e *keysEnv, c idempotency.Claim) {
			if _, err := e.keys.Complete(context.Background(), e.db, c, idempotency.Response{Status: 201, Body: []byte("{}")}, 0, finishThing("thing-1", "done")); err != nil {
				t.Fatal(err)
			}
		},
		want: idempotency.ErrKeyReused,
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeysEnv(t)
			c := e.claimNew(t, request("tenant-a", "k1", "fp-1"), "thing-1")
			tc.state(t, e, c)
			before, _ := e.record(t, c.Request)

			got, replay, err := e.keys.Claim(context.Background(), e.db, request("tenant-a", "k1", "fp-other"), kind, "thing-2", createThing("thing-2"))
			if !errors.Is(err, tc.want) || replay != nil || got.Token != "" {
				t.Errorf("Claim with another fingerprint: %+v, replay %+v, %v; want %v", got, replay, err, tc.want)
			}
			if after, _ := e.record(t, c.Request); after.Token != before.Token || after.Fingerprint != "fp-1" || after.Status != before.Status {
				t.Errorf("the refused claim changed the record: %+v, was %+v", after, before)
			}
			if _, ok := e.thing(t, "thing-2"); ok {
				t.Error("the refused claim made a thing")
			}
		})
	}
}

func TestKeys_ClaimOfACompleteKeyReplaysItsResponse(t *testing.T) {
	cases := []struct {
		name string
		resp idempotency.Response
	}{
		{"created", idempotency.Response{
			Status: http.StatusCreated,
			Header: http.Header{"Content-Type": {"application/json"}, "Location": {"/things/thing-1"}, "X-Multi": {"a", "b"}},
			// Not JSON, not UTF-8: stored as bytes, not text.
			Body: []byte("{\"id\":\"thing-1\"}\n\x00\xff\xfe"),
		}},
		{"without header", idempotency.Response{Status: http.StatusAccepted, Body: []byte(`{"state":"done"}`)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeysEnv(t)
			ctx := context.Background()
			req := request("tenant-a", "k1", "fp-1")
			c := e.claimNew(t, req, "thing-1")
			if stored, err := e.keys.Complete(ctx, e.db, c, tc.resp, 0, finishThing("thing-1", "done")); err != nil || stored != nil {
				t.Fatalf("Complete: %+v, %v", stored, err)
			}

			got, replay, err := e.keys.Claim(ctx, e.db, req, kind, "thing-2", createThing("thing-2"))
			if err != nil || replay == nil || got.Token != "" {
				t.Fatalf("Claim of the complete key: %+v, replay %+v, %v; want its response and no claim", got, replay, err)
			}
			if !replay.Replayed || !replay.Final || replay.Status != tc.resp.Status ||
				!reflect.DeepEqual(replay.Header, tc.resp.Header) || !bytes.Equal(replay.Body, tc.resp.Body) {
				t.Errorf("replay %+v (body %q); want Replayed, Final and byte for byte %+v (body %q)", replay, replay.Body, tc.resp, tc.resp.Body)
			}
			if e.things(t) != 1 {
				t.Error("the replay made a thing")
			}
			if got := e.outcomes(t); got[idempotency.OutcomeReplay] != 1 {
				t.Errorf("outcomes %v, want 1 replay", got)
			}
		})
	}
}

// A final answer need not have a body: 204 No Content is one.
func TestKeys_CompleteStoresAResponseWithoutABody(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	c := e.claimNew(t, req, "thing-1")
	if _, err := e.keys.Complete(ctx, e.db, c, idempotency.Response{Status: http.StatusNoContent}, 0, finishThing("thing-1", "done")); err != nil {
		t.Fatalf("Complete of a Response without a body: %v", err)
	}
	_, replay, err := e.keys.Claim(ctx, e.db, req, kind, "thing-2", createThing("thing-2"))
	if err != nil || replay == nil || replay.Status != http.StatusNoContent || len(replay.Body) != 0 {
		t.Errorf("Claim of the complete key: replay %+v, %v; want the 204, empty", replay, err)
	}
}

func TestKeys_CompleteIsFencedByTheLease(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	db, spy := testenv.OpenSpied(t, e.url)
	req := request("tenant-a", "k1", "fp-1")
	old := e.claimNew(t, req, "thing-1")
	e.expireLease(t, req)
	holder, _, err := e.keys.Claim(ctx, e.db, req, kind, "thing-2", createThing("thing-2"))
	if err != nil || holder.New {
		t.Fatalf("takeover: %+v, %v", holder, err)
	}

	// The old holder lost its lease: whatever it learned, it writes nothing.
	if _, err := e.keys.Complete(ctx, e.db, old, idempotency.Response{Status: 500, Body: []byte("old")}, 0, finishThing("thing-1", "old")); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("the old holder's Complete: %v, want ErrLeaseLost", err)
	}
	if state, _ := e.thing(t, "thing-1"); state != "pending" {
		t.Errorf("the old holder's Complete set thing-1 %q", state)
	}
	if rec, _ := e.record(t, req); rec.Status.Valid || rec.Token.String != holder.Token {
		t.Errorf("after the old holder's Complete: %+v; want no response, the new holder's lease", rec)
	}

	// The holder completes: response, lease and resource in one statement.
	resp := idempotency.Response{Status: 201, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":"thing-1"}`)}
	spy.Reset()
	if stored, err := e.keys.Complete(ctx, db, holder, resp, 0, finishThing("thing-1", "done")); err != nil || stored != nil {
		t.Fatalf("the holder's Complete: %+v, %v", stored, err)
	}
	if n := len(spy.Statements()); n != 1 || spy.Commits() != 1 {
		t.Errorf("Complete sent %d statements with %d commits, want 1 statement", n, spy.Commits())
	}
	if state, _ := e.thing(t, "thing-1"); state != "done" {
		t.Errorf("thing-1 is %q after Complete, want done", state)
	}
	done, _ := e.record(t, req)
	if done.Status.Int64 != 201 || done.Token.Valid || done.LeaseActive || !done.CompletedAt.Valid {
		t.Errorf("record after Complete %+v; want the response stored and the lease released", done)
	}

	// Later Completes, by anyone, learn the outcome and change nothing.
	for name, c := range map[string]idempotency.Claim{"old holder": old, "holder": holder} {
		stored, err := e.keys.Complete(ctx, e.db, c, idempotency.Response{Status: 500, Body: []byte("late")}, 0, finishThing("thing-1", "late"))
		if err != nil || stored == nil || !stored.Replayed || stored.Status != 201 || !bytes.Equal(stored.Body, resp.Body) {
			t.Errorf("%s's second Complete: %+v, %v; want the stored response, Replayed", name, stored, err)
		}
	}
	if state, _ := e.thing(t, "thing-1"); state != "done" {
		t.Errorf("a second Complete set thing-1 %q", state)
	}
	if rec, _ := e.record(t, req); rec != done {
		t.Errorf("a second Complete changed the record: %+v, was %+v", rec, done)
	}
}

func TestKeys_CompleteAfterIdlingWaitsOutTheLastAttemptUnderTheRowLock(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	c := e.claimNew(t, req, "thing-1")
	verdict := idempotency.Response{Status: 200, Body: []byte(`{"state":"gone"}`)}

	if _, err := e.keys.Complete(ctx, e.db, c, verdict, time.Hour, finishThing("thing-1", "gone")); !errors.Is(err, idempotency.ErrAttemptTooRecent) {
		t.Fatalf("Complete an hour early: %v, want ErrAttemptTooRecent", err)
	}
	if rec, _ := e.record(t, req); rec.Status.Valid || rec.Token.String != c.Token {
		t.Fatalf("the refused Complete changed the record: %+v", rec)
	}

	// The attempt is old enough now, as time would make it...
	e.ageAttempt(t, req, 2*time.Hour)
	// ...but another transaction holds the row, recording a new attempt,
	// while the Complete runs. The Complete must see it: its check belongs
	// under the row lock, not before it.
	other, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback()
	if _, err := other.Exec(`UPDATE idempotency_keys SET attempted_at = now() WHERE scope = $1 AND key = $2`, req.Scope, req.Key); err != nil {
		t.Fatal(err)
	}
	completed := make(chan error, 1)
	go func() {
		_, err := e.keys.Complete(ctx, e.db, c, verdict, time.Hour, finishThing("thing-1", "gone"))
		completed <- err
	}()
	waitForLockWaiters(t, e.db, 1)
	if err := other.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-completed; !errors.Is(err, idempotency.ErrAttemptTooRecent) {
		t.Fatalf("a Complete racing a new attempt: %v, want ErrAttemptTooRecent", err)
	}
	if state, _ := e.thing(t, "thing-1"); state != "pending" {
		t.Fatalf("the refused Complete set thing-1 %q", state)
	}

	e.ageAttempt(t, req, 2*time.Hour)
	if stored, err := e.keys.Complete(ctx, e.db, c, verdict, time.Hour, finishThing("thing-1", "gone")); err != nil || stored != nil {
		t.Fatalf("Complete after the attempt aged: %+v, %v", stored, err)
	}
	if state, _ := e.thing(t, "thing-1"); state != "gone" {
		t.Errorf("thing-1 is %q, want gone", state)
	}
}

func TestKeys_ReleaseIsFencedAndLeavesTheWorkPending(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	old := e.claimNew(t, req, "thing-1")
	e.expireLease(t, req)
	holder, _, err := e.keys.Claim(ctx, e.db, req, kind, "thing-2", createThing("thing-2"))
	if err != nil {
		t.Fatal(err)
	}

	if err := e.keys.Release(ctx, e.db, old, false); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Errorf("Release with the old token: %v, want ErrLeaseLost", err)
	}
	if rec, _ := e.record(t, req); rec.Token.String != holder.Token || !rec.LeaseActive {
		t.Fatalf("the old token's Release changed the lease: %+v", rec)
	}

	if err := e.keys.Release(ctx, e.db, holder, true); err != nil {
		t.Fatal(err)
	}
	rec, _ := e.record(t, req)
	if rec.Token.Valid || rec.LeaseActive || !rec.Checked || rec.Status.Valid {
		t.Errorf("record after Release(checked) %+v; want pending, unheld, checked", rec)
	}
	if state, _ := e.thing(t, "thing-1"); state != "pending" {
		t.Errorf("thing-1 is %q after Release, want pending", state)
	}
	// Released, the key is free at once, without waiting out the lease.
	next, _, err := e.keys.Claim(ctx, e.db, req, kind, "thing-3", createThing("thing-3"))
	if err != nil || next.New || next.ResourceID != "thing-1" {
		t.Errorf("Claim after Release: %+v, %v; want it to resume thing-1", next, err)
	}
}

func TestKeys_AbandonDeletesRecordAndResourceInOneStatement(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	db, spy := testenv.OpenSpied(t, e.url)
	req := request("tenant-a", "k1", "fp-1")
	c := e.claimNew(t, req, "thing-1")

	if err := e.keys.Abandon(ctx, db, c, removeThing); err != nil {
		t.Fatal(err)
	}
	if n := len(spy.Statements()); n != 1 || spy.Commits() != 1 {
		t.Errorf("Abandon sent %d statements with %d commits, want 1 statement", n, spy.Commits())
	}
	if _, ok := e.record(t, req); ok {
		t.Error("the record survived Abandon")
	}
	if _, ok := e.thing(t, "thing-1"); ok {
		t.Error("the thing survived Abandon")
	}
	if _, err := e.keys.Complete(ctx, e.db, c, idempotency.Response{Status: 201, Body: []byte("{}")}, 0, finishThing("thing-1", "done")); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Errorf("Complete of an abandoned claim: %v, want ErrLeaseLost", err)
	}

	// The key is free for a new request.
	again := e.claimNew(t, req, "thing-2")
	if again.Token == c.Token {
		t.Error("the new claim reuses the abandoned token")
	}
}

func TestKeys_AbandonIsRefusedUnlessTheClaimHoldsPendingWorkOfItsResource(t *testing.T) {
	cases := []struct {
		name string
		// claim returns the claim that tries to abandon the key.
		claim func(t *testing.T, e *keysEnv, c idempotency.Claim) idempotency.Claim
	}{{
		name: "taken over",
		claim: func(t *testing.T, e *keysEnv, c idempotency.Claim) idempotency.Claim {
			e.expireLease(t, c.Request)
			if _, _, err := e.keys.Claim(context.Background(), e.db, c.Request, kind, "thing-2", createThing("thing-2")); err != nil {
				t.Fatal(err)
			}
			return c
		},
	}, {
		name: "another resource",
		claim: func(_ *testing.T, _ *keysEnv, c idempotency.Claim) idempotency.Claim {
			c.ResourceID = "thing-2"
			return c
		},
	}, {
		name: "complete",
		claim: func(t *testing.T, e *keysEnv, c idempotency.Claim) idempotency.Claim {
			if _, err := e.keys.Complete(context.Background(), e.db, c, idempotency.Response{Status: 201, Body: []byte("{}")}, 0, finishThing("thing-1", "done")); err != nil {
				t.Fatal(err)
			}
			return c
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeysEnv(t)
			req := request("tenant-a", "k1", "fp-1")
			c := tc.claim(t, e, e.claimNew(t, req, "thing-1"))
			before, _ := e.record(t, req)

			if err := e.keys.Abandon(context.Background(), e.db, c, removeThing); !errors.Is(err, idempotency.ErrLeaseLost) {
				t.Errorf("Abandon: %v, want ErrLeaseLost", err)
			}
			if after, ok := e.record(t, req); !ok || after != before {
				t.Errorf("the refused Abandon changed the record: %+v (exists %v), was %+v", after, ok, before)
			}
			if _, ok := e.thing(t, "thing-1"); !ok {
				t.Error("the refused Abandon deleted the thing")
			}
		})
	}
}

// errLost stands for a connection lost after the server committed a
// statement and before its answer arrived.
var errLost = errors.New("connection reset: answer lost")

// loseAnswerOf makes the spied pool lose the answer of the first statement
// containing marker, once.
func loseAnswerOf(spy *testenv.SQLSpy, marker string) {
	var once sync.Once
	spy.After(func(query string) error {
		var err error
		if strings.Contains(query, marker) {
			once.Do(func() { err = errLost })
		}
		return err
	})
}

func TestKeys_UnclaimUndoesANewClaimWhoseAnswerWasLost(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	db, spy := testenv.OpenSpied(t, e.url)
	req := request("tenant-a", "k1", "fp-1")
	loseAnswerOf(spy, "INSERT INTO idempotency_keys")

	c, replay, err := e.keys.Claim(ctx, db, req, kind, "thing-1", createThing("thing-1"))
	if !errors.Is(err, errLost) || replay != nil || c.Token == "" || !c.New {
		t.Fatalf("Claim whose answer was lost: %+v, replay %+v, %v; want the error and the attempted claim", c, replay, err)
	}
	// The scenario: the claim did commit.
	if rec, ok := e.record(t, req); !ok || rec.Token.String != c.Token {
		t.Fatalf("the lost claim did not commit (%+v, %v): the test sets nothing up", rec, ok)
	}

	if err := e.keys.Unclaim(ctx, db, c, removeThing); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.record(t, req); ok {
		t.Error("the record survived Unclaim of a new claim")
	}
	if _, ok := e.thing(t, "thing-1"); ok {
		t.Error("the thing survived Unclaim of a new claim")
	}
	e.claimNew(t, req, "thing-2")
}

func TestKeys_UnclaimReleasesATakeoverWhoseAnswerWasLost(t *testing.T) {
	cases := []struct {
		name  string
		retry string // the resource the retry would make were the key new
	}{
		{"retry with a fresh resource id", "thing-2"},
		// A domain may well name a resource by its request: the retry then
		// names the thing the key already made.
		{"retry with the same resource id", "thing-1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newKeysEnv(t)
			ctx := context.Background()
			db, spy := testenv.OpenSpied(t, e.url)
			req := request("tenant-a", "k1", "fp-1")
			e.claimNew(t, req, "thing-1")
			e.expireLease(t, req)
			loseAnswerOf(spy, "attempted_at = now()")

			c, replay, err := e.keys.Claim(ctx, db, req, kind, tc.retry, createThing(tc.retry))
			if !errors.Is(err, errLost) || replay != nil || c.Token == "" || c.New {
				t.Fatalf("takeover whose answer was lost: %+v, replay %+v, %v; want the error and the attempted takeover", c, replay, err)
			}
			if rec, _ := e.record(t, req); rec.Token.String != c.Token {
				t.Fatalf("the lost takeover did not commit (%+v): the test sets nothing up", rec)
			}

			if err := e.keys.Unclaim(ctx, db, c, removeThing); err != nil {
				t.Fatal(err)
			}
			// The work may have been started by the holder before: it stays.
			rec, ok := e.record(t, req)
			if !ok {
				t.Fatalf("Unclaim of a takeover deleted its record (thing-1 left: %v): "+
					"it must only release a key the claim did not create", e.things(t) == 1)
			}
			if rec.Token.Valid || rec.LeaseActive || rec.Status.Valid || rec.ResourceID != "thing-1" {
				t.Errorf("record after Unclaim of a takeover %+v; want thing-1's, pending and released", rec)
			}
			if state, ok := e.thing(t, "thing-1"); !ok || state != "pending" {
				t.Errorf("thing-1 after Unclaim: %q, exists %v; want it pending", state, ok)
			}
			next, _, err := e.keys.Claim(ctx, e.db, req, kind, "thing-3", createThing("thing-3"))
			if err != nil || next.New || next.ResourceID != "thing-1" {
				t.Errorf("Claim after Unclaim: %+v, %v; want it to resume thing-1 at once", next, err)
			}
		})
	}
}

func TestKeys_StaleListsPendingUnheldKeysNeverCheckedFirstThenOldestAttempt(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	released := func(key string, ago time.Duration) idempotency.Claim {
		t.Helper()
		c := e.claimNew(t, request("tenant-a", key, "fp-"+key), "thing-"+key)
		if err := e.keys.Release(ctx, e.db, c, false); err != nil {
			t.Fatal(err)
		}
		e.ageAttempt(t, c.Request, ago)
		return c
	}
	older := released("older", 4*time.Hour)
	released("old", 3*time.Hour)
	expired := e.claimNew(t, request("tenant-a", "expired", "fp-expired"), "thing-expired")
	e.expireLease(t, expired.Request) // its holder died: nobody holds it
	e.ageAttempt(t, expired.Request, 2*time.Hour)
	released("checked", 5*time.Hour)
	e.exec(t, `UPDATE idempotency_keys SET checked_at = now() - interval '1 hour' WHERE key = 'checked'`)
	// Not stale:
	held := e.claimNew(t, request("tenant-a", "held", "fp-held"), "thing-held")
	e.ageAttempt(t, held.Request, 3*time.Hour)
	released("recent", 0)
	complete := e.claimNew(t, request("tenant-a", "complete", "fp-complete"), "thing-complete")
	e.ageAttempt(t, complete.Request, 3*time.Hour)
	if _, err := e.keys.Complete(ctx, e.db, complete, idempotency.Response{Status: 201, Body: []byte("{}")}, 0, finishThing("thing-complete", "done")); err != nil {
		t.Fatal(err)
	}
	otherKind, _, err := e.keys.Claim(ctx, e.db, request("tenant-a", "other-kind", "fp"), "other", "thing-other", createThing("thing-other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.keys.Release(ctx, e.db, otherKind, false); err != nil {
		t.Fatal(err)
	}
	e.ageAttempt(t, otherKind.Request, 3*time.Hour)

	stale := func() []string {
		t.Helper()
		cs, err := e.keys.Stale(ctx, e.db, kind, time.Hour, 10)
		if err != nil {
			t.Fatal(err)
		}
		keys := make([]string, len(cs))
		for i, c := range cs {
			keys[i] = c.Key
			if c.Scope != "tenant-a" || c.Fingerprint != "fp-"+c.Key || c.ResourceID != "thing-"+c.Key || c.Kind != kind || c.At.IsZero() || c.Token != "" {
				t.Errorf("stale key %+v; want its request, resource, kind and creation time, unclaimed", c)
			}
		}
		return keys
	}
	if got, want := stale(), []string{"older", "old", "expired", "checked"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Stale = %v, want %v", got, want)
	}
	if cs, err := e.keys.Stale(ctx, e.db, kind, time.Hour, 2); err != nil || len(cs) != 2 || cs[0].Key != "older" {
		t.Errorf("Stale limited to 2: %+v, %v; want the first two", cs, err)
	}

	// A reconciler takes the first, without recording an attempt...
	before, _ := e.record(t, older.Request)
	take := older
	take.Token = ""
	if err := e.keys.Take(ctx, e.db, &take); err != nil {
		t.Fatal(err)
	}
	rec, _ := e.record(t, take.Request)
	if take.Token == "" || take.At.IsZero() || rec.Token.String != take.Token || !rec.LeaseActive || rec.AttemptedAt != before.AttemptedAt {
		t.Errorf("Take: claim %+v, record %+v; want the lease under a new token, and the attempt left as it was", take, rec)
	}
	if got, want := stale(), []string{"old", "expired", "checked"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Stale while older is taken = %v, want %v", got, want)
	}
	// ...which nobody else can take, nor a complete one...
	for name, c := range map[string]idempotency.Claim{"held": older, "complete": complete} {
		if err := e.keys.Take(ctx, e.db, &c); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Errorf("Take of a %s key: %v, want ErrLeaseLost", name, err)
		}
	}
	// ...and leaves it, looked at: it goes after the ones nobody looked at
	// and those looked at before it.
	if err := e.keys.Release(ctx, e.db, take, true); err != nil {
		t.Fatal(err)
	}
	if got, want := stale(), []string{"old", "expired", "checked", "older"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Stale after the reconciler checked older = %v, want %v", got, want)
	}
}

func TestKeys_ExistsReportsWhetherTheKeyHasARecord(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	exists := func() bool {
		t.Helper()
		ok, err := e.keys.Exists(ctx, e.db, req)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if exists() {
		t.Error("Exists before any claim")
	}
	c := e.claimNew(t, req, "thing-1")
	if !exists() {
		t.Error("not Exists after the claim")
	}
	if ok, err := e.keys.Exists(ctx, e.db, request("tenant-b", "k1", "fp-1")); err != nil || ok {
		t.Errorf("Exists for another scope's same key: %v, %v; want false", ok, err)
	}
	if err := e.keys.Abandon(ctx, e.db, c, removeThing); err != nil {
		t.Fatal(err)
	}
	if exists() {
		t.Error("Exists after Abandon")
	}
}

// A domain's write with ten or more parameters of its own: the key's
// parameters are numbered after them ($11 on), and $1 is not $10's prefix.
func TestKeys_WritesWithManyParametersOfTheirOwn(t *testing.T) {
	e := newKeysEnv(t)
	ctx := context.Background()
	req := request("tenant-a", "k1", "fp-1")
	// state = concat_ws(',', $2, ..., $n+1): each parameter in its place.
	manyArgs := func(sql, id string, words ...string) idempotency.Write {
		params := make([]string, len(words))
		args := []any{id}
		for i, w := range words {
			params[i] = fmt.Sprintf("$%d::text", i+2)
			args = append(args, w)
		}
		return idempotency.Write{SQL: fmt.Sprintf(sql, strings.Join(params, ", ")), Args: args}
	}
	create := manyArgs(`INSERT INTO things (id, state) SELECT $1, concat_ws(',', %s) FROM claimed`,
		"thing-1", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j")
	c, _, err := e.keys.Claim(ctx, e.db, req, kind, "thing-1", create)
	if err != nil || !c.New {
		t.Fatalf("Claim with 11 parameters of the write's own: %+v, %v", c, err)
	}
	if state, _ := e.thing(t, "thing-1"); state != "a,b,c,d,e,f,g,h,i,j" {
		t.Errorf("thing-1 made with state %q, want a,...,j", state)
	}
	if rec, _ := e.record(t, req); rec.Fingerprint != "fp-1" || rec.ResourceID != "thing-1" || rec.Token.String != c.Token {
		t.Errorf("record %+v: the key's parameters were misnumbered", rec)
	}

	update := manyArgs(`UPDATE things SET state = concat_ws(',', %s) WHERE id = $1 AND EXISTS (SELECT 1 FROM completed)`,
		"thing-1", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u")
	resp := idempotency.Response{Status: 201, Header: http.Header{"Location": {"/things/thing-1"}}, Body: []byte("many")}
	if stored, err := e.keys.Complete(ctx, e.db, c, resp, 0, update); err != nil || stored != nil {
		t.Fatalf("Complete with 12 parameters of the write's own: %+v, %v", stored, err)
	}
	if state, _ := e.thing(t, "thing-1"); state != "k,l,m,n,o,p,q,r,s,t,u" {
		t.Errorf("thing-1 completed with state %q, want k,...,u", state)
	}
	_, replay, err := e.keys.Claim(ctx, e.db, req, kind, "thing-2", createThing("thing-2"))
	if err != nil || replay == nil || replay.Status != 201 || !bytes.Equal(replay.Body, resp.Body) || replay.Header.Get("Location") != "/things/thing-1" {
		t.Errorf("replay %+v, %v; want the response stored by the many-parameter Complete", replay, err)
	}
}
