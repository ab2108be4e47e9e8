package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
)

// MaxBody is the largest request body accepted.
const MaxBody = 64 << 10

// RequestError is a client error found while reading a request: it
// carries the problem to answer with.
type RequestError struct {
	Kind   Kind
	Detail string
}

func (e *RequestError) Error() string { return e.Detail }

// Write answers with the error's problem.
func (e *RequestError) Write(w http.ResponseWriter, r *http.Request) {
	WriteProblem(w, r, e.Kind, e.Detail)
}

// RequireJSON checks that the request declares a JSON body.
func RequireJSON(r *http.Request) *RequestError {
	ct := r.Header.Get("Content-Type")
	mediaType, params, err := mime.ParseMediaType(ct)
	if err != nil || mediaType != "application/json" {
		return &RequestError{UnsupportedMedia, fmt.Sprintf("Content-Type must be application/json, got %q.", ct)}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return &RequestError{UnsupportedMedia, fmt.Sprintf("JSON must be UTF-8, got charset %q.", cs)}
	}
	return nil
}

// ReadBody reads the whole body, refusing more than MaxBody.
func ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, *RequestError) {
	tooLarge := &RequestError{TooLarge, fmt.Sprintf("The request body exceeds %d bytes.", MaxBody)}
	if r.ContentLength > MaxBody {
		return nil, tooLarge // refuse before reading a byte
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return nil, tooLarge
	case err != nil:
		return nil, &RequestError{Malformed, "The request body could not be read."}
	}
	return body, nil
}

// DecodeStrict decodes exactly one JSON value into dst. Unknown fields,
// wrong types and trailing data are errors: a client that sends "amout"
// must hear about it, not have a field silently ignored.
//
// So is a body that says two things at once: an object holding a member
// twice, or a member whose name matches a field only when case is ignored
// ("AMOUNT"). encoding/json would take the last duplicate and match names
// case-insensitively, while the idempotency fingerprint hashes the body as
// sent: {"amount":5,"AMOUNT":1000} and {"AMOUNT":1000,"amount":5} share a
// fingerprint but not an amount. Refusing them keeps one accepted body to
// one meaning.
func DecodeStrict(body []byte, dst any) *RequestError {
	switch trimmed := bytes.TrimSpace(body); {
	case len(trimmed) == 0:
		return &RequestError{Malformed, "The request body is empty; send a JSON object."}
	case bytes.Equal(trimmed, []byte("null")):
		// encoding/json would decode null into an untouched zero value.
		return &RequestError{Malformed, "The request body must be a JSON object, not null."}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return &RequestError{Malformed, describeJSONError(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &RequestError{Malformed, "The request body holds data after the JSON object."}
	}
	if detail := ambiguousMember(body, reflect.TypeOf(dst)); detail != "" {
		return &RequestError{Malformed, detail}
	}
	return nil
}

// ambiguousMember walks a valid JSON body alongside the type it decodes
// into, and describes the first member that is repeated within its object,
// or that names no field of a struct exactly. It returns "" if there is
// none.
func ambiguousMember(body []byte, t reflect.Type) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	detail, _ := walkMembers(dec, t, "")
	return detail
}

// walkMembers reads one value from dec; t is the Go type it decodes into,
// nil when unknown (inside an any). The error is only a decoding error,
// which cannot happen on a body the decoder has accepted.
func walkMembers(dec *json.Decoder, t reflect.Type, path string) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch tok {
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if detail, err := walkMembers(dec, elem, path+"[]"); detail != "" || err != nil {
				return detail, err
			}
		}
	case json.Delim('{'):
		fields := jsonFields(t)
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return "", err
			}
			name := tok.(string)
			member := strings.TrimPrefix(path+"."+name, ".")
			if seen[name] {
				return fmt.Sprintf("Field %q appears twice.", member), nil
			}
			seen[name] = true
			var next reflect.Type
			switch {
			case fields != nil:
				ft, ok := fields[name]
				if !ok {
					return fmt.Sprintf("Unknown field %q (field names are case-sensitive).", member), nil
				}
				next = ft
			case t != nil && t.Kind() == reflect.Map:
				next = t.Elem()
			}
			if detail, err := walkMembers(dec, next, member); detail != "" || err != nil {
				return detail, err
			}
		}
	default:
		return "", nil // a scalar
	}
	_, err = dec.Token() // the closing delimiter
	return "", err
}

// jsonFields maps the JSON names of a struct's fields to their types, as
// encoding/json names them; nil if t is not a struct.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
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
