package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/resiliencekit/payservice/internal/payments"
	"github.com/resiliencekit/payservice/internal/resilience"
)

// PaymentService is what the handlers need of the payments domain.
type PaymentService interface {
	Create(ctx context.Context, in payments.CreateInput) (payments.Result, error)
	Get(ctx context.Context, clientID, id string) (payments.Payment, error)
	List(ctx context.Context, clientID string, limit int, startingAfter string) (payments.Page, error)
}

// paymentJSON is a payment as the API shows it.
type paymentJSON struct {
	ID               string            `json:"id"`
	Amount           int64             `json:"amount"`
	Currency         string            `json:"currency"`
	Status           string            `json:"status"`
	Description      string            `json:"description"`
	Metadata         map[string]string `json:"metadata"`
	ProviderChargeID *string           `json:"provider_charge_id"`
	FailureCode      string            `json:"failure_code,omitempty"`
	CreatedAt        string            `json:"created_at"`
	UpdatedAt        string            `json:"updated_at"`
}

func viewPayment(p payments.Payment) paymentJSON {
	v := paymentJSON{
		ID:          p.ID,
		Amount:      p.Amount,
		Currency:    p.Currency,
		Status:      string(p.Status),
		Description: p.Description,
		Metadata:    p.Metadata,
		FailureCode: p.FailureCode,
		CreatedAt:   p.CreatedAt.UTC().Format(time.RFC3339Nano),
		UpdatedAt:   p.UpdatedAt.UTC().Format(time.RFC3339Nano),
	}
	if v.Metadata == nil {
		v.Metadata = map[string]string{} // always an object, never null
	}
	if p.ProviderChargeID != "" {
		v.ProviderChargeID = &p.ProviderChargeID
	}
	return v
}

// paymentsRoute is the route pattern of POST /v1/payments, part of every
// request fingerprint.
const paymentsRoute = "/v1/payments"

type paymentHandlers struct {
	svc PaymentService
	log *slog.Logger
}

// create handles POST /v1/payments. Every check on the request happens
// before the service is called, so no bad request writes anything.
func (h *paymentHandlers) create(w http.ResponseWriter, r *http.Request) {
	client := ClientIDFrom(r.Context())
	if rerr := requireJSON(r); rerr != nil {
		writeProblem(w, r, rerr.kind, rerr.detail)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if !payments.ValidIdempotencyKey(key) {
		detail := "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces."
		if key == "" {
			detail = "The Idempotency-Key header is required: send a unique value per payment, and the same value when you retry it."
		}
		writeProblem(w, r, probBadIdempotencyKey, detail)
		return
	}
	body, rerr := readBody(w, r)
	if rerr != nil {
		writeProblem(w, r, rerr.kind, rerr.detail)
		return
	}
	var req payments.CreateRequest
	if rerr := decodeStrict(body, &req); rerr != nil {
		writeProblem(w, r, rerr.kind, rerr.detail)
		return
	}
	fingerprint, err := resilience.Fingerprint(r.Method, paymentsRoute, client, body)
	if err != nil { // decodeStrict accepted it, so this is a bug
		logError(h.log, r, "fingerprint request", err)
		writeProblem(w, r, probInternal, "The request could not be processed.")
		return
	}

	res, err := h.svc.Create(r.Context(), payments.CreateInput{
		ClientID:       client,
		IdempotencyKey: key,
		Fingerprint:    fingerprint,
		RequestID:      requestIDFrom(r.Context()),
		Request:        req,
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeResponse(w, res.Payment.ID, res.Response, res.Replayed)
}

// validPaymentRequest reports whether create would accept body: it
// decodes and validates. The idempotency fast path asks first, so that a
// bad request gets the same 400 or 422 whatever Redis holds for its key.
func validPaymentRequest(body []byte) bool {
	var req payments.CreateRequest
	return decodeStrict(body, &req) == nil && req.Validate() == nil
}

// writeResponse writes a rendered payment response. Its body is what was
// stored for the idempotency key (for final outcomes), so a first answer
// and every replay of it are the same bytes.
func writeResponse(w http.ResponseWriter, paymentID string, resp payments.Response, replayed bool) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if resp.Status == http.StatusPaymentRequired {
		h.Set("Content-Type", "application/problem+json")
	} else {
		h.Set("Location", paymentsRoute+"/"+paymentID)
	}
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// RenderPayment renders the response to a payment request: 201 with the
// payment when charged, 402 problem+json with the payment when it failed,
// 202 with the payment while its outcome is unknown. The service stores
// the final ones, so this is the format of every replay too.
func RenderPayment(p payments.Payment, requestID string) (payments.Response, error) {
	view := viewPayment(p)
	var v any = view
	status := http.StatusAccepted
	switch p.Status {
	case payments.StatusSucceeded:
		status = http.StatusCreated
	case payments.StatusFailed:
		status = http.StatusPaymentRequired
		prob := problemFor(probDeclined, "The payment was declined: "+p.FailureCode+".", requestID)
		if p.FailureCode == payments.FailureNoCharge {
			prob = problemFor(probPaymentFailed, "The provider never received the charge; nothing was paid. Retry with a new Idempotency-Key.", requestID)
		}
		prob.Payment = &view
		v = prob
	}
	body, err := json.Marshal(v)
	if err != nil {
		return payments.Response{}, fmt.Errorf("render payment %s: %w", p.ID, err)
	}
	return payments.Response{Status: status, Body: body}, nil
}

// get handles GET /v1/payments/{id}.
func (h *paymentHandlers) get(w http.ResponseWriter, r *http.Request) {
	p, err := h.svc.Get(r.Context(), ClientIDFrom(r.Context()), chi.URLParam(r, "id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, viewPayment(p))
}

// Page sizes of GET /v1/payments.
const (
	defaultPageSize = 10
	maxPageSize     = 100
)

// list handles GET /v1/payments?limit=&starting_after=.
func (h *paymentHandlers) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultPageSize
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageSize {
			writeProblem(w, r, probBadQuery, "limit must be an integer from 1 to 100.")
			return
		}
		limit = n
	}
	page, err := h.svc.List(r.Context(), ClientIDFrom(r.Context()), limit, q.Get("starting_after"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := struct {
		Data    []paymentJSON `json:"data"`
		HasMore bool          `json:"has_more"`
	}{Data: make([]paymentJSON, len(page.Payments)), HasMore: page.HasMore}
	for i, p := range page.Payments {
		out.Data[i] = viewPayment(p)
	}
	writeJSON(w, http.StatusOK, out)
}

// fail maps a service error to its problem. Unknown errors are 500s and
// are logged; expected ones are not, or the log would drown in them.
func (h *paymentHandlers) fail(w http.ResponseWriter, r *http.Request, err error) {
	var invalid *payments.ValidationError
	switch {
	case errors.As(err, &invalid):
		prob := newProblem(r, probInvalid, invalid.Error())
		prob.Errors = invalid.Errors
		writeProblemBody(w, prob)
	case errors.Is(err, payments.ErrKeyReused):
		writeKeyReused(w, r)
	case errors.Is(err, payments.ErrInFlight):
		writeInFlight(w, r)
	case errors.Is(err, payments.ErrNotFound):
		writeProblem(w, r, probNotFound, "No such payment.")
	case errors.Is(err, payments.ErrBadCursor):
		writeProblem(w, r, probBadQuery, "starting_after must be the id of one of your payments.")
	case errors.Is(err, payments.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		h.log.WarnContext(r.Context(), "dependency unavailable", "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblemRetry(w, r, probUnavailable, "A dependency is unavailable. Retry later with the same Idempotency-Key.", time.Second)
	default:
		logError(h.log, r, "request failed", err)
		writeProblem(w, r, probInternal, "The server failed unexpectedly; quote the request id when reporting it.")
	}
}

// writeKeyReused refuses a key used before for a different request (422).
func writeKeyReused(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, r, probKeyReused, "This Idempotency-Key was already used for a different request. Use a new key for a new payment.")
}

// writeInFlight refuses a key whose first request is still running (409).
func writeInFlight(w http.ResponseWriter, r *http.Request) {
	writeProblemRetry(w, r, probInFlight, "A request with this Idempotency-Key is still being processed. Retry later with the same key.", time.Second)
}
