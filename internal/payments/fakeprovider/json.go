package fakeprovider

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// maxBodyBytes bounds request bodies; the largest valid one is a few hundred
// bytes.
const maxBodyBytes = 64 << 10

// answer is a response decided but not yet written. Handlers return one
// instead of writing, which lets delayed put the injected latency between
// the decision and the client hearing of it.
type answer struct {
	status int
	body   any
	header http.Header // extra headers, such as Retry-After
}

// errorBody is the JSON of every error answer.
type errorBody struct {
	Error   string `json:"error"`   // a stable code for programs
	Message string `json:"message"` // an explanation for people
}

func errorAnswer(status int, code, message string) answer {
	return answer{status: status, body: errorBody{Error: code, Message: message}}
}

func (a answer) write(w http.ResponseWriter) {
	body, err := json.Marshal(a.body)
	if err != nil {
		// Bodies are this package's own types, validated on the way in, so
		// this is a bug; say so in the API's own format.
		a = errorAnswer(http.StatusInternalServerError, "internal", fmt.Sprintf("encode answer: %v", err))
		body, _ = json.Marshal(a.body)
	}
	for name, values := range a.header {
		w.Header()[name] = values
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	// A failed write means the client has gone; there is no one left to tell.
	_, _ = w.Write(append(body, '\n'))
}

// decodeJSON decodes exactly one JSON value from body into dst, rejecting
// unknown fields and trailing data: a fake that silently ignored a misspelt
// field would let a client's bug pass its tests.
func decodeJSON(body io.Reader, dst any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("decode request body: the body is empty; want a JSON object")
		}
		return fmt.Errorf("decode request body: %w", err)
	}
	if err := dec.Decode(new(json.RawMessage)); !errors.Is(err, io.EOF) {
		return errors.New("decode request body: want a single JSON object, found data after it")
	}
	return nil
}

// decodeErrorAnswer turns a decodeJSON error into the answer for it.
func decodeErrorAnswer(err error) answer {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errorAnswer(http.StatusRequestEntityTooLarge, "request_too_large",
			fmt.Sprintf("the request body is larger than %d bytes", maxBodyBytes))
	}
	return errorAnswer(http.StatusBadRequest, "invalid_request", err.Error())
}
