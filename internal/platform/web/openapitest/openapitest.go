// Package openapitest checks, in tests, a service's HTTP traffic against
// its OpenAPI description: every request a test sends through Handler or
// Transport, and its answer, is checked, and the test fails on an
// undocumented status, header or field. A Spec also records the
// operations the tests exercised, so that a package can check it left
// none out (CheckExercised), and compares the document with a router's
// routes (CheckRoutes).
//
// Answers are always checked: the status, the body against the schema of
// its content type, the headers the document requires, and that every
// header present is documented for that status (but the transport's own,
// such as Content-Length and Date; Content-Type is checked against the
// content map). Requests are checked only when answered 2xx: tests send
// invalid requests on purpose to see them refused, and what matters is
// that the server never accepts one.
//
// A request no path matches must be answered as the document's
// components.responses.RouteNotFound says (404), and one whose path has no
// such method as its MethodNotAllowed (405): the router's own answers.
//
// The trade-off: kin-openapi compiles the schemas for each exchange, some
// milliseconds (ten under -race). Fine for tests, not for middleware; and
// Transport, whose tests time a running server, checks in the background,
// one exchange at a time, before the test ends.
package openapitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"
)

// Reporter is where a check reports what does not match: a *testing.T,
// or a fake that records instead of failing.
type Reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// Spec is an OpenAPI document loaded for checking, and the record of the
// operations checked against it. It is safe for concurrent use.
type Spec struct {
	doc    *openapi3.T
	router routers.Router

	mu        sync.Mutex
	exercised map[string]int // by operation, "GET /path"

	// background bounds the checks Transport runs in the background to
	// one at a time: the server under test needs the CPUs more.
	background chan struct{}
}

// Load parses and validates an OpenAPI document.
func Load(spec []byte) (*Spec, error) {
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		return nil, fmt.Errorf("load OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("invalid OpenAPI document: %w", err)
	}
	// Match paths on any host: tests serve on loopback ports and
	// httptest's example.com.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route OpenAPI document: %w", err)
	}
	return &Spec{doc: doc, router: router, exercised: map[string]int{}, background: make(chan struct{}, 1)}, nil
}

// MustLoad is Load for a package's tests, which share one Spec so that it
// sees every operation they exercise. It panics on a document that does
// not load: no test of the package could mean anything.
func MustLoad(spec []byte) *Spec {
	s, err := Load(spec)
	if err != nil {
		panic("openapitest: " + err.Error())
	}
	return s
}

// Exchange is one request and the answer to it.
type Exchange struct {
	Request     *http.Request // its body is ignored: RequestBody is read
	RequestBody []byte
	Status      int
	Header      http.Header
	Body        []byte
}

// Check reports to t everything in the exchange that the document does
// not allow, and records its operation as exercised.
func (s *Spec) Check(t Reporter, x Exchange) {
	t.Helper()
	for _, problem := range s.problems(x) {
		t.Errorf("openapi: %s %s → %d: %s", x.Request.Method, x.Request.URL.RequestURI(), x.Status, problem)
	}
}

// transportHeaders are set by net/http or describe the body: not the
// API's to document. Content-Type is checked against the content map.
var transportHeaders = []string{"Content-Type", "Content-Length", "Date", "Connection", "Keep-Alive", "Transfer-Encoding", "Trailer"}

// problems returns what does not match, one sentence each.
func (s *Spec) problems(x Exchange) []string {
	req := x.Request.Clone(context.Background())
	req.Body = io.NopCloser(bytes.NewReader(x.RequestBody))
	req.ContentLength = int64(len(x.RequestBody))
	route, params, matched, err := s.route(req)
	if err != nil {
		return []string{err.Error()}
	}
	opts := &openapi3filter.Options{
		MultiError:                        true,
		IncludeResponseStatus:             true,
		RejectWhenRequestBodyNotSpecified: true,
		AuthenticationFunc:                bearerPresent,
	}
	opts.WithCustomSchemaErrorFunc(schemaError)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}

	var problems []string
	if matched {
		s.mu.Lock()
		s.exercised[operation(route.Method, route.Path)]++
		s.mu.Unlock()
		// Skipped unless 2xx: it could report nothing, and costs a
		// schema compilation.
		if x.Status/100 == 2 {
			if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
				problems = append(problems, "answered 2xx to a request the document does not allow: "+oneLine(err))
			}
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: x.Status, Header: x.Header, Options: opts}
	out.SetBodyBytes(x.Body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		problems = append(problems, oneLine(err))
	}
	return append(problems, undocumented(route, x)...)
}

// route returns the request's operation. A request no operation matches
// gets, in its place, one whose only answer is the router's, as the
// document describes it.
func (s *Spec) route(req *http.Request) (route *routers.Route, params map[string]string, matched bool, err error) {
	route, params, err = s.router.FindRoute(req)
	var name string
	var status int
	switch {
	case err == nil:
		return route, params, true, nil
	case errors.Is(err, routers.ErrPathNotFound):
		name, status = "RouteNotFound", http.StatusNotFound
	case errors.Is(err, routers.ErrMethodNotAllowed):
		name, status = "MethodNotAllowed", http.StatusMethodNotAllowed
	default:
		return nil, nil, false, fmt.Errorf("no operation: %w", err)
	}
	var answer *openapi3.ResponseRef
	if s.doc.Components != nil {
		answer = s.doc.Components.Responses[name]
	}
	if answer == nil {
		return nil, nil, false, fmt.Errorf("no operation for %s %s, and the document has no components.responses.%s", req.Method, req.URL.Path, name)
	}
	return &routers.Route{Spec: s.doc, Path: req.URL.Path, PathItem: &openapi3.PathItem{}, Method: req.Method,
		Operation: &openapi3.Operation{Responses: openapi3.NewResponses(openapi3.WithStatus(status, answer))}}, nil, false, nil
}

// undocumented returns what kin-openapi lets through: headers the document
// does not name for the status, and a body where it documents none.
func undocumented(route *routers.Route, x Exchange) []string {
	response := route.Operation.Responses.Status(x.Status)
	if response == nil || response.Value == nil {
		return nil // an undocumented status, reported as such
	}
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(x.Header)) {
		if !slices.Contains(transportHeaders, name) && !documented(response.Value.Headers, name) {
			problems = append(problems, fmt.Sprintf("header %s is not documented for %d", name, x.Status))
		}
	}
	if len(x.Body) > 0 && len(response.Value.Content) == 0 {
		problems = append(problems, fmt.Sprintf("a body of %d bytes, but %d is documented without content", len(x.Body), x.Status))
	}
	return problems
}

func documented(headers openapi3.Headers, name string) bool {
	for h := range headers {
		if http.CanonicalHeaderKey(h) == name {
			return true
		}
	}
	return false
}

// bearerPresent accepts a request that carries a bearer token, whatever
// it is: whether the key is valid is the server's to say, and an answer
// 2xx to a request without one is what the check is for.
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	scheme := in.SecurityScheme
	if scheme.Type != "http" || !strings.EqualFold(scheme.Scheme, "bearer") {
		return fmt.Errorf("security scheme %q (%s %s) is not one openapitest knows", in.SecuritySchemeName, scheme.Type, scheme.Scheme)
	}
	kind, token, _ := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !strings.EqualFold(kind, "Bearer") || strings.TrimSpace(token) == "" {
		return errors.New("no bearer token in Authorization")
	}
	return nil
}

// jsonschemaPrefix names the validator's scratch schema: noise.
var jsonschemaPrefix = regexp.MustCompile(`^jsonschema validation failed with '[^']*'\s*-\s*`)

// schemaError says what failed and on which value, without kin-openapi's
// dump of the whole schema: the document is at hand.
func schemaError(err *openapi3.SchemaError) string {
	value, _ := json.Marshal(err.Value)
	if len(value) > 300 {
		value = append(value[:300:300], "…"...)
	}
	reason := jsonschemaPrefix.ReplaceAllString(err.Reason, "")
	if reason == "" {
		reason = "doesn't match " + err.SchemaField
	}
	return fmt.Sprintf("%s (value %s)", reason, value)
}

// oneLine joins a validation error's lines: one report per problem.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func operation(method, path string) string { return method + " " + path }

// Operations returns the document's operations, as "GET /path", sorted.
func (s *Spec) Operations() []string {
	var ops []string
	for path, item := range s.doc.Paths.Map() {
		for method := range item.Operations() {
			ops = append(ops, operation(method, path))
		}
	}
	slices.Sort(ops)
	return ops
}

// CheckExercised reports each operation of the document that no exchange
// checked so far exercised. Call it once the package's tests are done:
// see Filtered.
func (s *Spec) CheckExercised(t Reporter) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range s.Operations() {
		if s.exercised[op] == 0 {
			t.Errorf("openapi: %s is never exercised by these tests: test it, or remove it from the document", op)
		}
	}
}

// chiParam matches a chi route parameter with its pattern, {id:[0-9]+}.
var chiParam = regexp.MustCompile(`\{([^}:]+):[^}]*\}`)

// CheckRoutes reports each route of the router that the document has no
// operation for, and each operation that is no route of the router.
func (s *Spec) CheckRoutes(t Reporter, router chi.Routes) {
	t.Helper()
	routes := map[string]bool{}
	err := chi.Walk(router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes[operation(method, chiParam.ReplaceAllString(route, "{$1}"))] = true
		return nil
	})
	if err != nil {
		t.Errorf("openapi: walk the router: %v", err)
		return
	}
	ops := s.Operations()
	for _, op := range ops {
		if !routes[op] {
			t.Errorf("openapi: the document has %s, which is no route of the router", op)
		}
	}
	for _, route := range slices.Sorted(maps.Keys(routes)) {
		if !slices.Contains(ops, route) {
			t.Errorf("openapi: the router has %s, which the document does not describe", route)
		}
	}
}

// Filtered says why a test run cannot have exercised every operation
// (-run, -skip or -fuzz chose the tests), or returns "". Call it after
// the flags are parsed.
func Filtered() string {
	var why []string
	for _, name := range []string{"test.run", "test.skip", "test.fuzz"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			why = append(why, fmt.Sprintf("-%s=%s", strings.TrimPrefix(name, "test."), f.Value))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return strings.Join(why, " ") + " chose the tests"
}
