// Package paymentsapi is the HTTP face of the payments domain: its routes,
// the JSON a payment is shown as, and the answers a payment request gets.
package paymentsapi

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
	"github.com/resiliencekit/payservice/internal/platform/resilience"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Problems of payment requests, beside the platform's.
var (
	probBadIdempotencyKey = web.Kind{Status: http.StatusBadRequest, Slug: "invalid-idempotency-key", Title: "Missing or invalid Idempotency-Key header"}
	probDeclined          = web.Kind{Status: http.StatusPaymentRequired, Slug: "payment-declined", Title: "Payment declined"}
	probPaymentFailed     = web.Kind{Status: http.StatusPaymentRequired, Slug: "payment-failed", Title: "Payment failed"}
	probInFlight          = web.Kind{Status: http.StatusConflict, Slug: "idempotency-key-in-flight", Title: "A request with this idempotency key is in progress"}
	probInvalid           = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "invalid-request", Title: "Invalid payment request"}
	probKeyReused         = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "idempotency-key-reused", Title: "Idempotency key reused with a different request"}
)

// Config is what the payment routes need.
type Config struct {
	Service PaymentService
	Log     *slog.Logger
	// ProblemTypes prefixes the type URI of problems stored with a payment
	// (a decline), rendered away from any request; the router's.
	ProblemTypes string

	// The Redis fast path of idempotency. Without a store, every request
	// goes to the payments service, whose Postgres claim is the truth.
	IdempotencyStore   *resilience.IdempotencyStore
	IdempotencyMetrics *resilience.IdempotencyMetrics
	IdempotencyLockTTL time.Duration
}

// Routes mounts the payment routes on r (the router's /v1).
func Routes(c Config) func(r chi.Router) {
	h := &paymentHandlers{svc: c.Service, log: c.Log}
	return func(r chi.Router) {
		r.Post("/payments", idempotent(c, h.create))
		r.Get("/payments", h.list)
		r.Get("/payments/{id}", h.get)
	}
}

// idempotent puts the Redis fast path in front of create, for requests
// whose media type is right (the others get create's 415, never a replay).
func idempotent(c Config, create http.HandlerFunc) http.HandlerFunc {
	if c.IdempotencyStore == nil {
		return create
	}
	guarded := resilience.NewIdempotency(resilience.IdempotencyConfig{
		Store:    c.IdempotencyStore,
		Metrics:  c.IdempotencyMetrics,
		Log:      c.Log,
		Lease:    c.IdempotencyLockTTL,
		MaxBody:  web.MaxBody,
		Scope:    func(r *http.Request) string { return web.ClientID(r.Context()) },
		Route:    paymentsRoute,
		ValidKey: payments.ValidIdempotencyKey,
		Valid:    validPaymentRequest,
		// Charged or declined: the outcomes stored and replayed.
		Final:    func(status int) bool { return status == http.StatusCreated || status == http.StatusPaymentRequired },
		InFlight: writeInFlight,
		Mismatch: writeKeyReused,
	}).Middleware(create)
	return func(w http.ResponseWriter, r *http.Request) {
		if web.RequireJSON(r) != nil {
			create(w, r)
			return
		}
		guarded.ServeHTTP(w, r)
	}
}

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
	client := web.ClientID(r.Context())
	if rerr := web.RequireJSON(r); rerr != nil {
		rerr.Write(w, r)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if !payments.ValidIdempotencyKey(key) {
		detail := "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces."
		if key == "" {
			detail = "The Idempotency-Key header is required: send a unique value per payment, and the same value when you retry it."
		}
		web.WriteProblem(w, r, probBadIdempotencyKey, detail)
		return
	}
	body, rerr := web.ReadBody(w, r)
	if rerr != nil {
		rerr.Write(w, r)
		return
	}
	var req payments.CreateRequest
	if _, rerr := web.DecodeStrict(body, &req); rerr != nil {
		rerr.Write(w, r)
		return
	}
	fingerprint, err := resilience.Fingerprint(r.Method, paymentsRoute, client, body)
	if err != nil { // decodeStrict accepted it, so this is a bug
		web.LogError(h.log, r, "fingerprint request", err)
		web.WriteProblem(w, r, web.Internal, "The request could not be processed.")
		return
	}

	res, err := h.svc.Create(r.Context(), payments.CreateInput{
		ClientID:       client,
		IdempotencyKey: key,
		Fingerprint:    fingerprint,
		RequestID:      web.RequestID(r.Context()),
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
	_, rerr := web.DecodeStrict(body, &req)
	return rerr == nil && req.Validate() == nil
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

// paymentProblem is the 402 answer: a problem with the failed payment.
type paymentProblem struct {
	web.Problem
	Payment *paymentJSON `json:"payment,omitempty"`
}

// Renderer returns the renderer of the response to a payment request: 201
// with the payment when charged, 402 problem+json with the payment when it
// failed, 202 with the payment while its outcome is unknown. The service
// stores the final ones, so this is the format of every replay too.
// problemTypes is the router's prefix of problem types.
func Renderer(problemTypes string) payments.Renderer {
	return func(p payments.Payment, requestID string) (payments.Response, error) {
		view := viewPayment(p)
		var v any = view
		status := http.StatusAccepted
		switch p.Status {
		case payments.StatusSucceeded:
			status = http.StatusCreated
		case payments.StatusFailed:
			status = http.StatusPaymentRequired
			prob := web.ProblemFor(problemTypes, probDeclined, "The payment was declined: "+p.FailureCode+".", requestID)
			if p.FailureCode == payments.FailureNoCharge {
				prob = web.ProblemFor(problemTypes, probPaymentFailed, "The provider never received the charge; nothing was paid. Retry with a new Idempotency-Key.", requestID)
			}
			v = paymentProblem{Problem: prob, Payment: &view}
		}
		body, err := json.Marshal(v)
		if err != nil {
			return payments.Response{}, fmt.Errorf("render payment %s: %w", p.ID, err)
		}
		return payments.Response{Status: status, Body: body}, nil
	}
}

// get handles GET /v1/payments/{id}.
func (h *paymentHandlers) get(w http.ResponseWriter, r *http.Request) {
	p, err := h.svc.Get(r.Context(), web.ClientID(r.Context()), chi.URLParam(r, "id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	web.WriteJSON(w, http.StatusOK, viewPayment(p))
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
			web.WriteProblem(w, r, web.BadQuery, "limit must be an integer from 1 to 100.")
			return
		}
		limit = n
	}
	page, err := h.svc.List(r.Context(), web.ClientID(r.Context()), limit, q.Get("starting_after"))
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
	web.WriteJSON(w, http.StatusOK, out)
}

// fail maps a service error to its problem. Unknown errors are 500s and
// are logged; expected ones are not, or the log would drown in them.
func (h *paymentHandlers) fail(w http.ResponseWriter, r *http.Request, err error) {
	var invalid *payments.ValidationError
	switch {
	case errors.As(err, &invalid):
		prob := web.NewProblem(r, probInvalid, invalid.Error())
		for _, fe := range invalid.Errors {
			prob.Errors = append(prob.Errors, web.FieldError{Field: fe.Field, Message: fe.Message})
		}
		web.WriteProblemBody(w, prob.Status, prob)
	case errors.Is(err, payments.ErrKeyReused):
		writeKeyReused(w, r)
	case errors.Is(err, payments.ErrInFlight):
		writeInFlight(w, r)
	case errors.Is(err, payments.ErrNotFound):
		web.WriteProblem(w, r, web.NotFound, "No such payment.")
	case errors.Is(err, payments.ErrBadCursor):
		web.WriteProblem(w, r, web.BadQuery, "starting_after must be the id of one of your payments.")
	case errors.Is(err, payments.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		h.log.WarnContext(r.Context(), "dependency unavailable", "err", err, "request_id", web.RequestID(r.Context()))
		web.WriteProblemRetry(w, r, web.Unavailable, "A dependency is unavailable. Retry later with the same Idempotency-Key.", time.Second)
	default:
		web.LogError(h.log, r, "request failed", err)
		web.WriteProblem(w, r, web.Internal, "The server failed unexpectedly; quote the request id when reporting it.")
	}
}

// writeKeyReused refuses a key used before for a different request (422).
func writeKeyReused(w http.ResponseWriter, r *http.Request) {
	web.WriteProblem(w, r, probKeyReused, "This Idempotency-Key was already used for a different request. Use a new key for a new payment.")
}

// writeInFlight refuses a key whose first request is still running (409).
func writeInFlight(w http.ResponseWriter, r *http.Request) {
	web.WriteProblemRetry(w, r, probInFlight, "A request with this Idempotency-Key is still being processed. Retry later with the same key.", time.Second)
}
