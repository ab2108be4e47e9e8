package openapitest

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
)

// Handler returns h with every exchange it serves checked, and reported
// to t: for tests that serve requests with httptest.
func (s *Spec) Handler(t Reporter, h http.Handler) http.Handler {
	return &checked{spec: s, t: t, next: h}
}

type checked struct {
	spec *Spec
	t    Reporter
	next http.Handler
}

// ServeHTTP is a helper: a report names the test's line that served the
// request.
func (c *checked) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.t.Helper()
	body, err := readAll(r.Body)
	served := r.Clone(r.Context())
	served.Body = replay(body, err)
	rec := &recorder{ResponseWriter: w}
	c.next.ServeHTTP(rec, served)
	if rec.header == nil { // nothing written: net/http sends 200
		rec.WriteHeader(http.StatusOK)
	}
	c.spec.Check(c.t, Exchange{Request: r, RequestBody: body, Status: rec.code, Header: rec.header, Body: rec.body.Bytes()})
}

// Transport returns base (http.DefaultTransport if nil) with every
// exchange it carries checked, and reported to t: for tests that send
// requests to a running server. Only a complete answer is checked; a
// request that fails, or whose answer is cut short, is the caller's to
// notice.
//
// When t has a Cleanup method (a *testing.T does), the checks run in the
// background, so that they add no latency to what the test times, and the
// cleanup waits for them: they are reported before the test ends.
func (s *Spec) Transport(t Reporter, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	c := &transport{spec: s, t: t, base: base}
	if cl, ok := t.(interface{ Cleanup(func()) }); ok {
		c.pending = &sync.WaitGroup{}
		cl.Cleanup(c.pending.Wait)
	}
	return c
}

type transport struct {
	spec    *Spec
	t       Reporter
	base    http.RoundTripper
	pending *sync.WaitGroup // checks running in the background; nil: none
}

func (c *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.t.Helper()
	if c.pending == nil {
		resp, x, err := c.exchange(req)
		if x != nil {
			c.spec.Check(c.t, *x)
		}
		return resp, err
	}
	// Counted from the start: the cleanup waits for a request still in
	// flight too, whose check is to come.
	c.pending.Add(1)
	resp, x, err := c.exchange(req)
	if x == nil {
		c.pending.Done()
		return resp, err
	}
	go func() {
		defer c.pending.Done()
		c.spec.background <- struct{}{}
		defer func() { <-c.spec.background }()
		c.spec.Check(c.t, *x)
	}()
	return resp, err
}

// exchange carries req, and returns what to check: nil without a complete
// answer.
func (c *transport) exchange(req *http.Request) (*http.Response, *Exchange, error) {
	var body []byte
	sent := req.Clone(req.Context())
	if req.Body != nil && req.Body != http.NoBody {
		var err error
		if body, err = readAll(req.Body); err != nil {
			return nil, nil, fmt.Errorf("openapitest: read the request body: %w", err)
		}
		// GetBody stays the caller's: a request it left without one is
		// never resent.
		sent.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := c.base.RoundTrip(sent)
	if err != nil {
		return nil, nil, err
	}
	// An answer cut short is not checked: the caller meets the error as
	// it reads.
	answer, readErr := readAll(resp.Body)
	resp.Body = replay(answer, readErr)
	var x *Exchange
	if readErr == nil {
		x = &Exchange{Request: req, RequestBody: body, Status: resp.StatusCode, Header: resp.Header.Clone(), Body: answer}
	}
	return resp, x, nil
}

// CloseIdleConnections closes base's, as http.Client.CloseIdleConnections
// expects of its transport.
func (c *transport) CloseIdleConnections() {
	if b, ok := c.base.(interface{ CloseIdleConnections() }); ok {
		b.CloseIdleConnections()
	}
}

// readAll reads and closes a body, which may be nil.
func readAll(body io.ReadCloser) ([]byte, error) {
	if body == nil {
		return nil, nil
	}
	defer body.Close()
	return io.ReadAll(body)
}

// replay is a body that reads as data, then fails with err if not nil,
// as the body it was read from did.
func replay(data []byte, err error) io.ReadCloser {
	if err == nil {
		return io.NopCloser(bytes.NewReader(data))
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(data), failing{err}))
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// recorder passes an answer through, keeping a copy: its status, its
// headers as they were sent, its body.
type recorder struct {
	http.ResponseWriter
	code   int
	header http.Header
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.header == nil && code >= 200 { // 1xx answers are not the answer
		r.code, r.header = code, r.ResponseWriter.Header().Clone()
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.header == nil {
		r.WriteHeader(http.StatusOK)
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the writer's features.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// SayFiltered writes to w that the operations the tests exercise will not
// be checked, and why, when Filtered says so. Call it from TestMain after
// flag.Parse: a run whose filter leaves out the check itself says so too.
func SayFiltered(w io.Writer) {
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return // a fuzzing worker runs no tests; its coordinator said it
	}
	if why := Filtered(); why != "" {
		fmt.Fprintf(w, "openapi: not checking that the tests exercise every operation: %s\n", why)
	}
}

// Main runs a package's tests with run (m.Run's caller: testenv.Main,
// say), saying first when the run is filtered (SayFiltered). Call it from
// the TestMain of a package whose tests end in CheckExercisedLast.
func Main(m *testing.M, run func(*testing.M)) {
	flag.Parse()
	SayFiltered(os.Stdout)
	run(m)
}

// CheckExercisedLast is the whole of a package's "every operation is
// exercised" test. It makes that test parallel, the package's only one:
// go test starts parallel tests once the sequential ones have ended, so
// the check sees every exchange they made, whatever the tests' order. A
// filtered run cannot have exercised everything: the test is then skipped
// with the filter named (and Main said so before any test ran).
func (s *Spec) CheckExercisedLast(t *testing.T) {
	t.Helper()
	t.Parallel()
	if why := Filtered(); why != "" {
		t.Skipf("not checked: %s", why)
	}
	s.CheckExercised(t)
}
