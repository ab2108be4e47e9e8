package provider

import (
	"math"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A Retry-After is a wait: never negative, whatever the header says; its
// delay-seconds exactly, saturating at the longest time.Duration; an HTTP
// date the time until then, to the second; anything else, no wait.
func FuzzParseRetryAfter_IsNeverNegativeAndSaturatesAtTheLongestWait(f *testing.F) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, header := range []string{
		"", "3", "0", "-1", "soon", "+3", "0003", " 3", "3.5", "1e3",
		"10000000000", "99999999999999999999999",
		now.Add(90 * time.Second).Format(http.TimeFormat),
		now.Add(-time.Minute).Format(http.TimeFormat),
		"Thursday, 26-Nov-26 12:01:30 GMT", // RFC 850, obsolete but valid
		"Thu Nov 26 12:01:30 2026",         // asctime
	} {
		f.Add(header, uint64(0), int64(0))
	}
	f.Add("", uint64(math.MaxInt64/int64(time.Second)), int64(90))
	f.Add("", uint64(math.MaxInt64/int64(time.Second))+1, int64(-60))
	f.Add("", uint64(math.MaxUint64), int64(300*365*24*3600))
	f.Fuzz(func(t *testing.T, header string, secs uint64, offset int64) {
		got := parseRetryAfter(header, now)
		if got < 0 {
			t.Fatalf("Retry-After %q: %s, a negative wait", header, got)
		}
		if want := wait(header, now); got != want {
			t.Fatalf("Retry-After %q: %s, want %s", header, got, want)
		}

		// Both forms, built from the input.
		header = strconv.FormatUint(secs, 10)
		if got, want := parseRetryAfter(header, now), saturated(new(big.Int).SetUint64(secs)); got != want {
			t.Fatalf("Retry-After %q: %s, want %s", header, got, want)
		}
		offset %= 7000 * 365 * 24 * 3600 // within four-digit years
		header = time.Unix(now.Unix()+offset, 0).UTC().Format(http.TimeFormat)
		if got, want := parseRetryAfter(header, now), saturated(big.NewInt(max(offset, 0))); got != want {
			t.Fatalf("Retry-After %q, %ds from now: %s, want %s", header, offset, got, want)
		}
	})
}

// wait is the wait header asks for at now, by RFC 9110's rules.
func wait(header string, now time.Time) time.Duration {
	if header != "" && strings.Trim(header, "0123456789") == "" { // delay-seconds: 1*DIGIT
		n, _ := new(big.Int).SetString(header, 10)
		return saturated(n)
	}
	if at, err := http.ParseTime(header); err == nil && at.After(now) {
		return saturated(big.NewInt(at.Unix() - now.Unix())) // a date is to the second
	}
	return 0
}

// saturated is n seconds as a time.Duration, or the longest one.
func saturated(n *big.Int) time.Duration {
	ns := new(big.Int).Mul(n, big.NewInt(int64(time.Second)))
	if !ns.IsInt64() {
		return math.MaxInt64
	}
	return time.Duration(ns.Int64())
}
