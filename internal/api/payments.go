package api

import (
	"context"
	"errors"
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

// paymentJSON is a payment as the API shows it (DESIGN §2).
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
		Request:        req,
	})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if res.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	writePaymentOutcome(w, r, res.Payment)
}

// writePaymentOutcome answers with a payment's status: 201 charged, 402
// declined, 202 still processing.
func writePaymentOutcome(w http.ResponseWriter, r *http.Request, p payments.Payment) {
	view := viewPayment(p)
	switch p.Status {
	case payments.StatusSucceeded:
		w.Header().Set("Location", paymentsRoute+"/"+p.ID)
		writeJSON(w, http.StatusCreated, view)
	case payments.StatusFailed:
		prob := newProblem(r, probDeclined, "The payment was declined: "+p.FailureCode+".")
		prob.Payment = &view
		writeProblemBody(w, prob)
	default:
		w.Header().Set("Location", paymentsRoute+"/"+p.ID)
		writeJSON(w, http.StatusAccepted, view)
	}
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
		writeProblem(w, r, probKeyReused, "This Idempotency-Key was already used for a different request. Use a new key for a new payment.")
	case errors.Is(err, payments.ErrInFlight):
		writeProblemRetry(w, r, probInFlight, "A request with this Idempotency-Key is still being processed. Retry later with the same key.", time.Second)
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
