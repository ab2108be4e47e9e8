package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// maxBodyBytes is the largest request body accepted (DESIGN §2).
const maxBodyBytes = 64 << 10

// requestError is a client error found while reading a request: it carries
// the problem to answer with.
type requestError struct {
	kind   problemKind
	detail string
}

func (e *requestError) Error() string { return e.detail }

// requireJSON checks that the request declares a JSON body.
func requireJSON(r *http.Request) *requestError {
	ct := r.Header.Get("Content-Type")
	mediaType, params, err := mime.ParseMediaType(ct)
	if err != nil || mediaType != "application/json" {
		return &requestError{probUnsupportedMedia, fmt.Sprintf("Content-Type must be application/json, got %q.", ct)}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return &requestError{probUnsupportedMedia, fmt.Sprintf("JSON must be UTF-8, got charset %q.", cs)}
	}
	return nil
}

// readBody reads the whole body, refusing more than maxBodyBytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *requestError) {
	tooLarge := &requestError{probTooLarge, fmt.Sprintf("The request body exceeds %d bytes.", maxBodyBytes)}
	if r.ContentLength > maxBodyBytes {
		return nil, tooLarge // refuse before reading a byte
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return nil, tooLarge
	case err != nil:
		return nil, &requestError{probMalformed, "The request body could not be read."}
	}
	return body, nil
}

// decodeStrict decodes exactly one JSON value into dst. Unknown fields,
// wrong types and trailing data are errors: a client that sends "amout"
// must hear about it, not have a field silently ignored.
func decodeStrict(body []byte, dst any) *requestError {
	switch trimmed := bytes.TrimSpace(body); {
	case len(trimmed) == 0:
		return &requestError{probMalformed, "The request body is empty; send a JSON object."}
	case bytes.Equal(trimmed, []byte("null")):
		// encoding/json would decode null into an untouched zero value.
		return &requestError{probMalformed, "The request body must be a JSON object, not null."}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return &requestError{probMalformed, describeJSONError(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &requestError{probMalformed, "The request body holds data after the JSON object."}
	}
	return nil
}

// describeJSONError turns a decoding error into a sentence for the client.
func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("The request body is not valid JSON (at byte %d).", syntax.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "The request body is not valid JSON (it ends too early)."
	case errors.As(err, &typ) && typ.Field != "":
		return fmt.Sprintf("Field %q must be %s, not %s.", typ.Field, jsonTypeName(typ.Type.Kind().String()), typ.Value)
	case errors.As(err, &typ):
		return fmt.Sprintf("The request body must be a JSON object, not %s.", typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Sprintf("Unknown field %s.", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return "The request body is not valid JSON."
}

// jsonTypeName names a Go kind the way a JSON client thinks of it.
func jsonTypeName(kind string) string {
	switch kind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	}
	return kind
}
