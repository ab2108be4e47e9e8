package web

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRecoverPanic_AnswersProblemAndLogsStack(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := requestID(recoverPanic(log)(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("kaboom")
	})))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != 500 {
		t.Fatalf("status %d, want 500", rec.Code)
	}
	var p Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Status != 500 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Errorf("answer %s (%v), want a problem+json 500", rec.Body, err)
	}
	if !strings.Contains(logs.String(), "kaboom") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("log lacks the panic value or stack: %s", logs.String())
	}
}

func TestAnonymousKey_IsTheIPv4AddressOrTheIPv6Slash64(t *testing.T) {
	keys := []struct{ remote, want string }{
		{"192.0.2.1:1234", "192.0.2.1"},
		{"[::ffff:192.0.2.1]:1234", "192.0.2.1"}, // IPv4-mapped: still one IPv4 address
		{"[2001:db8:1:2::1]:1234", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1234", "2001:db8:1:2::/64"}, // same /64, another address
		{"[2001:db8:1:3::1]:1234", "2001:db8:1:3::/64"},
		{"[fe80::1%eth0]:1234", "fe80::/64"},
		{"pipe", "pipe"}, // not an address: used as it is
	}
	for _, k := range keys {
		if got := anonymousKey(k.remote); got != k.want {
			t.Errorf("anonymousKey(%q) = %q, want %q", k.remote, got, k.want)
		}
	}

}
