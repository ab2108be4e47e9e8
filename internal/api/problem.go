package api

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/resiliencekit/payservice/internal/payments"
)

// problemTypeBase prefixes every problem type URI. The .example domain is
// reserved (RFC 2606): point it at your API's documentation when you adopt
// the template.
const problemTypeBase = "https://payservice.example/problems/"

// problemKind is one kind of error a client can meet. Every error response
// of the API is one of these, rendered as RFC 9457 problem+json.
type problemKind struct {
	status int
	slug   string // the last segment of the type URI
	title  string // the same for every occurrence of the kind
}

var (
	probMalformed         = problemKind{http.StatusBadRequest, "malformed-request", "Malformed request"}
	probBadIdempotencyKey = problemKind{http.StatusBadRequest, "invalid-idempotency-key", "Missing or invalid Idempotency-Key header"}
	probBadQuery          = problemKind{http.StatusBadRequest, "invalid-query", "Invalid query parameter"}
	probUnauthorized      = problemKind{http.StatusUnauthorized, "unauthorized", "Missing or invalid API key"}
	probDeclined          = problemKind{http.StatusPaymentRequired, "payment-declined", "Payment declined"}
	probPaymentFailed     = problemKind{http.StatusPaymentRequired, "payment-failed", "Payment failed"}
	probNotFound          = problemKind{http.StatusNotFound, "not-found", "Not found"}
	probMethodNotAllowed  = problemKind{http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed"}
	probInFlight          = problemKind{http.StatusConflict, "idempotency-key-in-flight", "A request with this idempotency key is in progress"}
	probTooLarge          = problemKind{http.StatusRequestEntityTooLarge, "request-too-large", "Request body too large"}
	probUnsupportedMedia  = problemKind{http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type"}
	probInvalid           = problemKind{http.StatusUnprocessableEntity, "invalid-request", "Invalid payment request"}
	probKeyReused         = problemKind{http.StatusUnprocessableEntity, "idempotency-key-reused", "Idempotency key reused with a different request"}
	probRateLimited       = problemKind{http.StatusTooManyRequests, "rate-limited", "Too many requests"}
	probUnavailable       = problemKind{http.StatusServiceUnavailable, "unavailable", "Service temporarily unavailable"}
	probInternal          = problemKind{http.StatusInternalServerError, "internal", "Internal server error"}
)

// problem is the RFC 9457 body, plus our extension members.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`

	Errors  []payments.FieldError `json:"errors,omitempty"`  // invalid-request: every field problem
	Payment *paymentJSON          `json:"payment,omitempty"` // payment-declined: the failed payment
}

func newProblem(r *http.Request, kind problemKind, detail string) problem {
	return problemFor(kind, detail, requestIDFrom(r.Context()))
}

func problemFor(kind problemKind, detail, requestID string) problem {
	return problem{
		Type:      problemTypeBase + kind.slug,
		Title:     kind.title,
		Status:    kind.status,
		Detail:    detail,
		RequestID: requestID,
	}
}

// writeProblem answers with a problem of the given kind.
func writeProblem(w http.ResponseWriter, r *http.Request, kind problemKind, detail string) {
	writeProblemBody(w, newProblem(r, kind, detail))
}

// writeProblemRetry answers with a problem and a Retry-After header, for the
// statuses that promise the client a later try may succeed (409, 429, 503).
func writeProblemRetry(w http.ResponseWriter, r *http.Request, kind problemKind, detail string, after time.Duration) {
	w.Header().Set("Retry-After", retryAfterSeconds(after))
	writeProblem(w, r, kind, detail)
}

func writeProblemBody(w http.ResponseWriter, p problem) {
	body, err := json.Marshal(p)
	if err != nil {
		// A problem is plain strings and numbers; this cannot fail.
		panic("encode problem: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// retryAfterSeconds renders a delay as Retry-After delay-seconds, rounding
// up: "0" would invite an immediate retry.
func retryAfterSeconds(d time.Duration) string {
	secs := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic("encode response: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// logError logs an error that became a 5xx answer. The client sees only the
// request id; the log line holds the cause.
func logError(log *slog.Logger, r *http.Request, msg string, err error) {
	log.ErrorContext(r.Context(), msg, "err", err, "request_id", requestIDFrom(r.Context()),
		"method", r.Method, "path", r.URL.Path)
}
