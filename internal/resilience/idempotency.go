package resilience

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Fingerprint identifies a request for idempotency purposes: the same
// method, route, client and JSON body give the same fingerprint, whatever
// the key order or whitespace of the body. A client that reuses an
// idempotency key for a different request is caught by comparing
// fingerprints.
//
// route should be the route pattern (/v1/payments), not the raw path, so
// that equivalent spellings of a path do not differ. The body must be one
// JSON value; anything else is an error.
func Fingerprint(method, route, clientID string, body []byte) (string, error) {
	canonical, err := CanonicalJSON(body)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	// Length-prefix each part so that no two different inputs can be
	// spelt the same once concatenated.
	for _, part := range [][]byte{[]byte(method), []byte(route), []byte(clientID), canonical} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// CanonicalJSON re-encodes one JSON value with object keys sorted and no
// insignificant whitespace. Numbers keep their exact text.
func CanonicalJSON(body []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("canonical JSON: data after the JSON value")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	// encoding/json writes map keys in sorted order: that is the canonical
	// form.
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
