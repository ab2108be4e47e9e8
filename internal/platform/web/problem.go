package web

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// Kind is one kind of error a client can meet. Every error answer of the
// API is one of these, rendered as RFC 9457 problem+json; a domain adds
// its own kinds beside these.
type Kind struct {
	Status int
	Slug   string // the last segment of the type URI
	Title  string // the same for every occurrence of the kind
}

// The kinds of error any route can meet.
var (
	Malformed        = Kind{http.StatusBadRequest, "malformed-request", "Malformed request"}
	BadQuery         = Kind{http.StatusBadRequest, "invalid-query", "Invalid query parameter"}
	Unauthorized     = Kind{http.StatusUnauthorized, "unauthorized", "Missing or invalid API key"}
	NotFound         = Kind{http.StatusNotFound, "not-found", "Not found"}
	MethodNotAllowed = Kind{http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed"}
	TooLarge         = Kind{http.StatusRequestEntityTooLarge, "request-too-large", "Request body too large"}
	UnsupportedMedia = Kind{http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type"}
	RateLimited      = Kind{http.StatusTooManyRequests, "rate-limited", "Too many requests"}
	Unavailable      = Kind{http.StatusServiceUnavailable, "unavailable", "Service temporarily unavailable"}
	Internal         = Kind{http.StatusInternalServerError, "internal", "Internal server error"}
)

// Problem is the RFC 9457 body. A domain that adds members embeds it:
// encoding/json then writes its members first, in this order.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
	// Errors lists every field problem of an invalid request.
	Errors []FieldError `json:"errors,omitempty"`
}

// FieldError is one problem with one field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// NewProblem returns the problem of kind for the request.
func NewProblem(r *http.Request, kind Kind, detail string) Problem {
	base, _ := r.Context().Value(problemTypesKey).(string)
	return ProblemFor(base, kind, detail, RequestID(r.Context()))
}

// ProblemFor returns the problem of kind with the type URI base + slug,
// for answers rendered away from any request (stored to be replayed).
func ProblemFor(base string, kind Kind, detail, requestID string) Problem {
	return Problem{
		Type:      base + kind.Slug,
		Title:     kind.Title,
		Status:    kind.Status,
		Detail:    detail,
		RequestID: requestID,
	}
}

// ProblemTypes returns the prefix of the request's problem types.
func ProblemTypes(r *http.Request) string {
	base, _ := r.Context().Value(problemTypesKey).(string)
	return base
}

// WriteProblem answers with a problem of the given kind.
func WriteProblem(w http.ResponseWriter, r *http.Request, kind Kind, detail string) {
	WriteProblemBody(w, kind.Status, NewProblem(r, kind, detail))
}

// WriteProblemRetry answers with a problem and a Retry-After header, for
// the statuses that promise the client a later try may succeed (409, 429,
// 503).
func WriteProblemRetry(w http.ResponseWriter, r *http.Request, kind Kind, detail string, after time.Duration) {
	w.Header().Set("Retry-After", RetryAfterSeconds(after))
	WriteProblem(w, r, kind, detail)
}

// WriteProblemBody answers with body, a Problem or a struct embedding one.
func WriteProblemBody(w http.ResponseWriter, status int, body any) {
	raw, err := json.Marshal(body)
	if err != nil {
		// A problem is plain strings and numbers; this cannot fail.
		panic("encode problem: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
	w.WriteHeader(status)
	_, _ = w.Write(raw)
}

// RetryAfterSeconds renders a delay as Retry-After delay-seconds, rounding
// up: "0" would invite an immediate retry.
func RetryAfterSeconds(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// WriteJSON answers with a JSON body.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic("encode response: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// LogError logs an error that became a 5xx answer. The client sees only
// the request id; the log line holds the cause.
func LogError(log *slog.Logger, r *http.Request, msg string, err error) {
	log.ErrorContext(r.Context(), msg, "err", err, "request_id", RequestID(r.Context()),
		"method", r.Method, "path", r.URL.Path)
}
