package provider

import (
	"math"
	"net/http"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{"0", 0},
		{"-1", 0},
		{"soon", 0},
		{"+3", 0}, // delay-seconds has no sign
		// Too long for a time.Duration: the longest one, not a wrapped
		// negative value that would pass any cap and mean "retry now".
		{"10000000000", math.MaxInt64},
		{"99999999999999999999999", math.MaxInt64}, // beyond even a uint64
		// Found by FuzzParseRetryAfter: too long for a uint64 and then not
		// a number at all. Invalid, so no wait, not the longest one.
		{"18700000000000000000A", 0},
		{"99999999999999999999 seconds", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0}, // in the past
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.header, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.header, got, tt.want)
		}
	}
}
