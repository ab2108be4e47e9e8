package idempotency_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"testing"

	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// body is a request body shaped like a domain's: integers, floats, text, a
// map, a list and a nested object, each a place where two spellings could
// mean one value, or one spelling two.
type body struct {
	N     int64             `json:"n"`
	F     float64           `json:"f"`
	S     string            `json:"s"`
	B     bool              `json:"b"`
	M     map[string]string `json:"m"`
	L     []string          `json:"l"`
	Inner *struct {
		N int64  `json:"n"`
		S string `json:"s"`
	} `json:"inner"`
}

// A fingerprint hashes the canonical body, not the decoded request, so two
// spellings of one request may differ ({"n":0} and {}): the client then
// hears that its key was reused, and nothing is done twice. What must never
// happen is the converse, two different requests sharing a fingerprint,
// which would answer one with the other's stored response. So: bodies with
// one fingerprint decode to one request; a body re-spaced, reordered or
// re-escaped keeps its fingerprint; and moving bytes from one part of the
// fingerprint to another changes it.
func FuzzFingerprint_IsSharedOnlyByBodiesThatMeanTheSameRequest(f *testing.F) {
	for _, pair := range [][2]string{
		{`{"n":1000,"s":"usd","m":{"a":"1","b":"2"}}`, " { \"m\": {\"b\":\"2\", \"a\":\"1\"},\n \"s\":\"usd\", \"n\": 1000 } "},
		{`{"n":1000}`, `{"n":1001}`},
		{`{"n":0}`, `{}`},
		{`{"n":5,"N":1000}`, `{"N":1000,"n":5}`},
		{`{"m":{"a":"x","a":"y"}}`, `{"m":{"a":"y"}}`},
		{`{"s":"\u0075sd","f":1.50}`, `{"s":"usd","f":1.5}`},
		{`{"s":"\ud800"}`, `{"s":"\ufffd"}`},
		{"{\"s\":\"\xff\"}", "{\"s\":\"\xfe\"}"},
		{`{"inner":{"n":1,"S":"x"}}`, `{"inner":null,"l":["a",""]}`},
	} {
		f.Add("client_a", []byte(pair[0]), []byte(pair[1]))
	}
	const method, route = "POST", "/v1/things"
	f.Fuzz(func(t *testing.T, scope string, a, b []byte) {
		reqA, canonA, okA := decode(t, a)
		reqB, canonB, okB := decode(t, b)
		if !okA || !okB {
			return
		}
		fingerprint := func(p [4]string) string { return idempotency.Fingerprint(p[0], p[1], p[2], []byte(p[3])) }
		parts := [4]string{method, route, scope, string(canonA)}
		fpA := fingerprint(parts)
		if fpA == idempotency.Fingerprint(method, route, scope, canonB) && !reflect.DeepEqual(reqA, reqB) {
			t.Fatalf("%q and %q share a fingerprint, but decode to\n%+v\n%+v", a, b, reqA, reqB)
		}
		for i := range 3 {
			if parts[i+1] == "" {
				continue
			}
			moved := parts
			moved[i], moved[i+1] = parts[i]+parts[i+1][:1], parts[i+1][1:]
			if fingerprint(moved) == fpA {
				t.Fatalf("parts %q and %q share a fingerprint", parts, moved)
			}
		}
	})
}

// decode decodes raw as a route would, and checks that its canonical form
// means the same request and is its own canonical form, so that sending it
// instead (or raw re-spaced) keeps the fingerprint. ok is false when the
// body is refused.
func decode(t *testing.T, raw []byte) (req body, canonical []byte, ok bool) {
	t.Helper()
	canonical, rerr := web.DecodeStrict(raw, &req)
	if rerr != nil {
		return body{}, nil, false
	}
	var again body
	if canonAgain, rerr := web.DecodeStrict(canonical, &again); rerr != nil || !bytes.Equal(canonAgain, canonical) || !reflect.DeepEqual(again, req) {
		t.Fatalf("%q has canonical form %s, which decodes to %+v with canonical form %s (%v); want %+v and itself", raw, canonical, again, canonAgain, rerr, req)
	}
	var spaced bytes.Buffer
	if err := json.Indent(&spaced, raw, " ", "\t"); err != nil {
		t.Fatalf("%q accepted, but not JSON: %v", raw, err)
	}
	if c, rerr := web.DecodeStrict(spaced.Bytes(), new(body)); rerr != nil || !bytes.Equal(c, canonical) {
		t.Fatalf("%q re-spaced as %q: canonical form %s (%v), want %s", raw, spaced.Bytes(), c, rerr, canonical)
	}
	return req, canonical, true
}

// validKey is the documented rule: 1 to 255 printable ASCII characters,
// space excluded.
var validKey = regexp.MustCompile(`^[!-~]{1,255}$`)

func FuzzValidKey_AcceptsExactly1To255PrintableASCIIWithoutSpaces(f *testing.F) {
	for _, key := range []string{"order-42", "a", "", "a b", "clé", "k\x00", "\x7f", "~!", " order-42", "order-42\t"} {
		f.Add(key)
	}
	f.Add(string(bytes.Repeat([]byte("k"), idempotency.MaxKey)))
	f.Add(string(bytes.Repeat([]byte("k"), idempotency.MaxKey+1)))
	f.Fuzz(func(t *testing.T, key string) {
		if got, want := idempotency.ValidKey(key), validKey.MatchString(key); got != want {
			t.Fatalf("ValidKey(%q) = %v, want %v", key, got, want)
		}
	})
}
