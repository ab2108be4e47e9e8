package web

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// A client's X-Request-Id is echoed only when it is safe to log as is; any
// other is replaced whole, never truncated, so that an id in the logs is
// either exactly the client's or visibly the server's own.
func TestRequestID_EchoesASafeIDAndReplacesAnyOtherWhole(t *testing.T) {
	generated := regexp.MustCompile(`^[0-9a-f]{24}$`)
	for _, tt := range []struct {
		name, sent string
		echoed     bool
	}{
		{"short", "req-1", true},
		{"at the 128 character limit", strings.Repeat("a", 128), true},
		{"every printable character", "!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~", true},
		{"over the limit", strings.Repeat("a", 129), false},
		{"absent", "", false},
		{"with a space", "req 1", false},
		{"with a tab", "req\t1", false},
		{"not ASCII", "req-é", false},
		{"with DEL", "req\x7f", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var seen string
			h := requestID(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				seen = RequestID(r.Context())
			}))
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if tt.sent != "" {
				r.Header["X-Request-Id"] = []string{tt.sent}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			got := rec.Header().Get("X-Request-Id")
			if got != seen {
				t.Errorf("the response says %q, the request's context %q: logs and client would disagree", got, seen)
			}
			switch {
			case tt.echoed && got != tt.sent:
				t.Errorf("X-Request-Id %q, want the client's %q echoed", got, tt.sent)
			case !tt.echoed && !generated.MatchString(got):
				t.Errorf("X-Request-Id %q for %q: want a fresh 24-hex-digit id, not the client's or a part of it", got, tt.sent)
			}
		})
	}
}
