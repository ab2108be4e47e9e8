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
	"slices"
	"strconv"
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

// DecodeStrict decodes exactly one JSON value into dst, and returns the
// body in canonical form: keys sorted, no insignificant whitespace,
// numbers as written (what an idempotency fingerprint hashes). Unknown
// fields, wrong types and trailing data are errors: a client that sends
// "amout" must hear about it, not have a field silently ignored.
//
// So is null for a field that has no nil (a string, a number, a bool, a
// struct): leave the member out instead. And so is a body that
// says two things at once: an object holding a member
// twice, or a member whose name matches a field only when case is ignored
// ("AMOUNT"). encoding/json would take the last duplicate and match names
// case-insensitively, while a fingerprint hashes the body as sent:
// {"amount":5,"AMOUNT":1000} and {"AMOUNT":1000,"amount":5} would share a
// fingerprint but not an amount. Refusing them keeps one accepted body to
// one meaning.
func DecodeStrict(body []byte, dst any) (canonical []byte, rerr *RequestError) {
	switch trimmed := bytes.TrimSpace(body); {
	case len(trimmed) == 0:
		return nil, &RequestError{Malformed, "The request body is empty; send a JSON object."}
	case bytes.Equal(trimmed, []byte("null")):
		// encoding/json would decode null into an untouched zero value.
		return nil, &RequestError{Malformed, "The request body must be a JSON object, not null."}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return nil, &RequestError{Malformed, describeJSONError(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &RequestError{Malformed, "The request body holds data after the JSON object."}
	}
	w := walker{dec: json.NewDecoder(bytes.NewReader(body))}
	w.dec.UseNumber()
	canonical, detail, err := w.value(reflect.TypeOf(dst), "")
	switch {
	case detail != "":
		return nil, &RequestError{Malformed, detail}
	case err != nil: // cannot happen on a body the decoder accepted
		return nil, &RequestError{Malformed, describeJSONError(err)}
	}
	return canonical, nil
}

// walker reads a valid JSON body token by token, alongside the Go type it
// decodes into, to find ambiguous members and write the canonical form.
type walker struct {
	dec *json.Decoder
	str bytes.Buffer // scratch for encoding strings
}

// value reads one value; t is the Go type it decodes into, nil when unknown
// (inside an any). It returns the value in canonical form, or a detail
// describing the first member that is repeated within its object or that
// names no field of a struct exactly.
func (w *walker) value(t reflect.Type, path string) (canonical []byte, detail string, err error) {
	tok, err := w.dec.Token()
	if err != nil {
		return nil, "", err
	}
	// null means nil: only pointers, interfaces, maps and slices have it.
	// encoding/json leaves any other field untouched, so
	// {"description":null} would pass as an empty string. (A map may be
	// null: Go's own encoder writes a nil map so.)
	k := reflect.Invalid
	if t != nil {
		k = t.Kind()
	}
	nullable := t == nil || k == reflect.Pointer || k == reflect.Interface || k == reflect.Map || k == reflect.Slice
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch tok := tok.(type) {
	case json.Delim:
		if tok == '[' {
			return w.array(t, path)
		}
		return w.object(t, path)
	case string:
		return w.encodeString(tok), "", nil
	case json.Number:
		return []byte(tok), "", nil
	case bool:
		return strconv.AppendBool(nil, tok), "", nil
	default: // nil
		if !nullable {
			return nil, fmt.Sprintf("Field %q is null: leave it out or give it a value.", path), nil
		}
		return []byte("null"), "", nil
	}
}

func (w *walker) array(t reflect.Type, path string) ([]byte, string, error) {
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	out := []byte{'['}
	for w.dec.More() {
		v, detail, err := w.value(elem, path+"[]")
		if detail != "" || err != nil {
			return nil, detail, err
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, v...)
	}
	_, err := w.dec.Token() // ]
	return append(out, ']'), "", err
}

func (w *walker) object(t reflect.Type, path string) ([]byte, string, error) {
	fields := jsonFields(t)
	type member struct {
		name  string
		value []byte
	}
	var members []member
	seen := map[string]bool{}
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return nil, "", err
		}
		name := tok.(string)
		where := strings.TrimPrefix(path+"."+name, ".")
		if seen[name] {
			return nil, fmt.Sprintf("Field %q appears twice.", where), nil
		}
		seen[name] = true
		var next reflect.Type
		switch {
		case fields != nil:
			ft, ok := fields[name]
			if !ok {
				return nil, fmt.Sprintf("Unknown field %q (field names are case-sensitive).", where), nil
			}
			next = ft
		case t != nil && t.Kind() == reflect.Map:
			next = t.Elem()
		}
		v, detail, err := w.value(next, where)
		if detail != "" || err != nil {
			return nil, detail, err
		}
		members = append(members, member{name, v})
	}
	if _, err := w.dec.Token(); err != nil { // }
		return nil, "", err
	}
	// Sorted by name, byte by byte: the order encoding/json writes a map's
	// keys in, so that the canonical form of every body accepted before
	// this walker existed is unchanged.
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })
	out := []byte{'{'}
	for i, m := range members {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, w.encodeString(m.name)...)
		out = append(out, ':')
		out = append(out, m.value...)
	}
	return append(out, '}'), "", nil
}

// encodeString writes s as encoding/json does without HTML escaping.
func (w *walker) encodeString(s string) []byte {
	w.str.Reset()
	enc := json.NewEncoder(&w.str)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.Clone(bytes.TrimSuffix(w.str.Bytes(), []byte("\n")))
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
