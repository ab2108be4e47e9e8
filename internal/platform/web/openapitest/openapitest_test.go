package openapitest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"
)

// widgets is a small API in the shape of the service's: bearer auth, a
// required response header, a strict body, the router's 404 and 405.
const widgets = `
openapi: 3.1.0
info: {title: widgets, version: "1"}
security: [{bearer: []}]
paths:
  /widgets/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      responses:
        "200":
          description: A widget.
          headers:
            X-Request-Id: {required: true, schema: {type: string}}
          content:
            application/json:
              schema:
                type: object
                additionalProperties: false
                required: [id]
                properties:
                  id: {type: string}
        "401":
          description: No key.
          headers:
            X-Request-Id: {required: true, schema: {type: string}}
            WWW-Authenticate: {required: true, schema: {type: string}}
  /widgets:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
      responses:
        "201": {description: Made.}
        "400": {description: Refused.}
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
  responses:
    RouteNotFound:
      description: No such route.
      content:
        application/json:
          schema: {type: object, required: [error]}
    MethodNotAllowed:
      description: No such method.
      headers:
        Allow: {required: true, schema: {type: string}}
`

// reports records what a check reports, instead of failing.
type reports []string

func (r *reports) Helper()                           {}
func (r *reports) Errorf(format string, args ...any) { *r = append(*r, fmt.Sprintf(format, args...)) }

func get(path string, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.Header.Set("Authorization", "Bearer k")
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func TestCheck_ReportsWhatTheDocumentDoesNotAllow(t *testing.T) {
	okHeader := hdr("X-Request-Id", "r1", "Content-Type", "application/json", "Content-Length", "12")
	tests := []struct {
		name string
		x    Exchange
		want []string // substrings of the reports, one each; none for a valid exchange
	}{
		{"a documented answer", Exchange{Request: get("/widgets/w1"), Status: 200, Header: okHeader, Body: []byte(`{"id":"w1"}`)}, nil},
		{"an undocumented status", Exchange{Request: get("/widgets/w1"), Status: 418, Header: okHeader, Body: []byte(`{"id":"w1"}`)},
			[]string{"GET /widgets/w1 → 418: status is not supported"}},
		{"an undocumented header", Exchange{Request: get("/widgets/w1"), Status: 200, Header: hdr("X-Request-Id", "r1", "Content-Type", "application/json", "Retry-After", "1"), Body: []byte(`{"id":"w1"}`)},
			[]string{"header Retry-After is not documented for 200"}},
		{"an unknown field", Exchange{Request: get("/widgets/w1"), Status: 200, Header: okHeader, Body: []byte(`{"id":"w1","colour":"red"}`)},
			[]string{`GET /widgets/w1 → 200: response body doesn't match schema: at '': additional properties 'colour' not allowed (value {"colour":"red","id":"w1"})`}},
		{"a required header missing", Exchange{Request: get("/widgets/w1"), Status: 200, Header: hdr("Content-Type", "application/json"), Body: []byte(`{"id":"w1"}`)},
			[]string{`response header "X-Request-Id" missing`}},
		{"an undocumented content type", Exchange{Request: get("/widgets/w1"), Status: 200, Header: hdr("X-Request-Id", "r1", "Content-Type", "text/plain"), Body: []byte(`w1`)},
			[]string{`"text/plain"`}},
		{"a body where none is documented", Exchange{Request: httptest.NewRequest(http.MethodPost, "/widgets", nil), RequestBody: []byte(`{"size":"big"}`), Status: 400, Header: hdr("Content-Type", "text/plain"), Body: []byte(`no`)},
			[]string{"a body of 2 bytes, but 400 is documented without content"}},
		{"2xx to a request without a key", Exchange{Request: httptest.NewRequest(http.MethodGet, "/widgets/w1", nil), Status: 200, Header: okHeader, Body: []byte(`{"id":"w1"}`)},
			[]string{"answered 2xx to a request the document does not allow", "no bearer token"}},
		{"401 to a request without a key", Exchange{Request: httptest.NewRequest(http.MethodGet, "/widgets/w1", nil), Status: 401, Header: hdr("X-Request-Id", "r1", "WWW-Authenticate", "Bearer")}, nil},
		{"2xx to an invalid body", Exchange{Request: post(), RequestBody: []byte(`{"size":0}`), Status: 201, Header: http.Header{}},
			[]string{"answered 2xx to a request the document does not allow", "size"}},
		{"400 to an invalid body", Exchange{Request: post(), RequestBody: []byte(`{"size":0}`), Status: 400, Header: http.Header{}}, nil},
		{"the router's 404", Exchange{Request: get("/gadgets"), Status: 404, Header: hdr("Content-Type", "application/json"), Body: []byte(`{"error":"no route"}`)}, nil},
		{"an answer to no route", Exchange{Request: get("/gadgets"), Status: 200, Header: hdr("Content-Type", "application/json"), Body: []byte(`{}`)},
			[]string{"GET /gadgets → 200: status is not supported"}},
		{"the router's 405", Exchange{Request: httptest.NewRequest(http.MethodDelete, "/widgets", nil), Status: 405, Header: hdr("Allow", "POST")}, nil},
		{"a 405 without Allow", Exchange{Request: httptest.NewRequest(http.MethodDelete, "/widgets", nil), Status: 405, Header: http.Header{}},
			[]string{`response header "Allow" missing`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := MustLoad([]byte(widgets))
			var got reports
			s.Check(&got, tt.x)
			if len(tt.want) == 0 && len(got) > 0 {
				t.Fatalf("reported a valid exchange: %q", got)
			}
			for _, want := range tt.want {
				if !strings.Contains(strings.Join(got, "\n"), want) {
					t.Errorf("reports %q, want one mentioning %q", got, want)
				}
			}
			if r := strings.Join(got, "\n"); strings.Contains(r, "schema.json") || strings.Contains(r, "\n ") {
				t.Errorf("reports carry the validator's noise: %q", got)
			}
		})
	}
}

func post() *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/widgets", nil)
	r.Header.Set("Authorization", "Bearer k")
	r.Header.Set("Content-Type", "application/json")
	return r
}

// widgetServer answers GET /widgets/{id} with a field the document lacks,
// and anything else with an undocumented status.
func widgetServer() http.Handler {
	r := chi.NewRouter()
	r.Get("/widgets/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "r1")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"colour":"red"}`, chi.URLParam(r, "id"))
	})
	r.Post("/widgets", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	return r
}

func TestHandlerAndTransport_CheckWhatTheyServeAndCarry(t *testing.T) {
	s := MustLoad([]byte(widgets))
	var got reports
	rec := httptest.NewRecorder()
	s.Handler(&got, widgetServer()).ServeHTTP(rec, get("/widgets/w1"))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "colour") {
		t.Errorf("the wrapped handler's answer changed: %d %s", rec.Code, rec.Body)
	}
	if len(got) != 1 || !strings.Contains(got[0], "colour") {
		t.Errorf("Handler reported %q, want the unknown field", got)
	}

	srv := httptest.NewServer(widgetServer())
	defer srv.Close()
	got = nil
	client := &http.Client{Transport: s.Transport(&got, nil)}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/widgets", strings.NewReader(`{"size":2}`))
	req.Header.Set("Authorization", "Bearer k")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(got) != 1 || !strings.Contains(got[0], "POST /widgets → 418: status is not supported") {
		t.Errorf("Transport reported %q, want the undocumented status", got)
	}
}

// cleaned is a reporter with a Cleanup, as a *testing.T has.
type cleaned struct {
	mu sync.Mutex
	reports
	cleanups []func()
}

func (c *cleaned) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reports.Errorf(format, args...)
}

func (c *cleaned) Cleanup(f func()) { c.cleanups = append(c.cleanups, f) }

func TestTransport_ChecksInTheBackgroundAndTheCleanupWaits(t *testing.T) {
	s := MustLoad([]byte(widgets))
	srv := httptest.NewServer(widgetServer())
	defer srv.Close()
	r := &cleaned{}
	client := &http.Client{Transport: s.Transport(r, nil)}
	for range 3 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/widgets/w1", nil)
		req.Header.Set("Authorization", "Bearer k")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if len(r.cleanups) != 1 {
		t.Fatalf("%d cleanups registered, want 1", len(r.cleanups))
	}
	r.cleanups[0]()
	if len(r.reports) != 3 || !strings.Contains(r.reports[2], "colour") {
		t.Errorf("after the cleanup: %q, want the unknown field reported 3 times", r.reports)
	}
}

func TestCheckExercised_NamesTheOperationsNoExchangeReached(t *testing.T) {
	s := MustLoad([]byte(widgets))
	s.Check(&reports{}, Exchange{Request: get("/widgets/w1"), Status: 401, Header: http.Header{}})
	s.Check(&reports{}, Exchange{Request: get("/gadgets"), Status: 404, Header: http.Header{}}) // no operation
	var got reports
	s.CheckExercised(&got)
	if len(got) != 1 || !strings.Contains(got[0], "POST /widgets is never exercised") {
		t.Errorf("reported %q, want POST /widgets alone", got)
	}
}

func TestCheckRoutes_ComparesTheRouterWithTheDocument(t *testing.T) {
	s := MustLoad([]byte(widgets))
	r := chi.NewRouter()
	r.Route("/widgets", func(r chi.Router) {
		r.Get("/{id:[a-z0-9]+}", http.NotFound) // a parameter with a pattern
		r.Delete("/{id}", http.NotFound)        // undocumented
	})
	var got reports
	s.CheckRoutes(&got, r)
	want := []string{
		"the document has POST /widgets, which is no route of the router",
		"the router has DELETE /widgets/{id}, which the document does not describe",
	}
	if len(got) != len(want) {
		t.Fatalf("reported %q, want %q", got, want)
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("report %q, want %q", got[i], want[i])
		}
	}
}
