package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// oldCanonical is how fingerprints were computed before DecodeStrict
// produced the canonical form: decode into any, re-encode with sorted keys.
// Stored fingerprints came from it, so for every body DecodeStrict accepts
// the two must agree byte for byte, or a key used before an upgrade would
// be refused as reused after it.
func oldCanonical(body []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// anyBody accepts any object, so that the canonical form of every shape of
// JSON is compared.
type anyBody map[string]any

func TestDecodeStrict_CanonicalFormIsTheOneFingerprintsWereMadeOf(t *testing.T) {
	for _, body := range []string{
		`{"amount":1000,"currency":"usd"}`,
		" {\n \"currency\" : \"usd\",\t\"amount\": 1000 } ",
		`{"metadata":{"b":"2","a":"1","A":"0"},"amount":1e3,"x":-0.50,"y":12345678901234567890}`,
		`{"s":"<tag> & \"quotes\" \\ \/ \u00e9 \u2028 \u0001 é 日本"}`,
		"{\"s\":\"invalid \xff utf-8\",\"k\\u00e9y\":true,\"n\":null,\"f\":false}",
		`{"nested":[{"z":1,"a":[2,3,{"c":"d","b":[]}]},[],{}],"empty":""}`,
		`{"ä":1,"a":2,"Z":3,"_":4,"10":5,"9":6}`,
	} {
		var dst anyBody
		got, rerr := DecodeStrict([]byte(body), &dst)
		if rerr != nil {
			t.Errorf("DecodeStrict(%s): %v", body, rerr)
			continue
		}
		want, err := oldCanonical([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("canonical form of %s\n got %s\nwant %s", body, got, want)
		}
	}
}

func FuzzDecodeStrict_CanonicalFormIsTheOneFingerprintsWereMadeOf(f *testing.F) {
	f.Add([]byte(`{"amount":1000,"currency":"usd","metadata":{"a":"1"}}`))
	f.Add([]byte(`{"s":"\u2028<>&","n":[1.50,-0,1e-7]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var dst anyBody
		got, rerr := DecodeStrict(body, &dst)
		if rerr != nil {
			return // refused: it has no fingerprint
		}
		want, err := oldCanonical(body)
		if err != nil {
			t.Fatalf("DecodeStrict accepted %q, which the old canonical form refuses: %v", body, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("canonical form of %q\n got %s\nwant %s", body, got, want)
		}
	})
}
