package fakeprovider_test

import (
	"net/http"
	"testing"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

func TestTraceID(t *testing.T) {
	for _, tc := range []struct {
		name, traceparent, want string
	}{
		{"sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"not sampled: still the caller's trace", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"none", "", ""},
		{"malformed", "00-xyz-00f067aa0ba902b7-01", ""},
		{"all-zero trace id, invalid", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.traceparent != "" {
				h.Set("Traceparent", tc.traceparent)
			}
			if got := fakeprovider.TraceID(h); got != tc.want {
				t.Errorf("TraceID(traceparent %q) = %q, want %q", tc.traceparent, got, tc.want)
			}
		})
	}
}
