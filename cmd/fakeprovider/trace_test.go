package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// TestAccessLog_NamesTheTraceOfATracedRequest: the line of a request that
// carries a traceparent has its trace_id; the line of one without has none.
func TestAccessLog_NamesTheTraceOfATracedRequest(t *testing.T) {
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		name, traceparent, want string
	}{
		{"traced", "00-" + traceID + "-00f067aa0ba902b7-01", traceID},
		{"not traced", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			h := accessLog(slog.New(slog.NewJSONHandler(&out, nil)), fakeprovider.New())
			req := httptest.NewRequest(http.MethodPost, "/v1/charges", strings.NewReader(`{"amount":1000,"currency":"usd"}`))
			req.Header.Set("Idempotency-Key", "k")
			if tc.traceparent != "" {
				req.Header.Set("Traceparent", tc.traceparent)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)

			var line map[string]any
			if err := json.Unmarshal(out.Bytes(), &line); err != nil {
				t.Fatalf("log line %q: %v", out.String(), err)
			}
			got, ok := line["trace_id"]
			if tc.want == "" && ok {
				t.Errorf("log line has trace_id %v, want none: %s", got, out.String())
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("trace_id = %v, want %s: %s", got, tc.want, out.String())
			}
		})
	}
}
