// Package paymentsapi is the HTTP face of the payments domain: its routes,
// the JSON a payment and a refund are shown as, and the answers their
// requests get. The POST routes get their idempotency from the platform's
// idempotency.Guard, by wiring.
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
	"github.com/resiliencekit/payservice/internal/platform/idempotency"
	"github.com/resiliencekit/payservice/internal/platform/web"
)

// Problems of payment requests, beside the platform's.
var (
	probDeclined      = web.Kind{Status: http.StatusPaymentRequired, Slug: "payment-declined", Title: "Payment declined"}
	probPaymentFailed = web.Kind{Status: http.StatusPaymentRequired, Slug: "payment-failed", Title: "Payment failed"}
	probInvalid       = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "invalid-request", Title: "Invalid payment request"}
	probNotRefundable = web.Kind{Status: http.StatusConflict, Slug: "payment-not-refundable", Title: "Payment not refundable"}
	probTooLarge      = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "refund-too-large", Title: "Refund larger than what is left"}
	probRefundFailed  = web.Kind{Status: http.StatusUnprocessableEntity, Slug: "refund-failed", Title: "Refund refused"}
)

// Service is what the handlers need of the payments domain.
type Service interface {
	Create(ctx context.Context, req idempotency.Request, body payments.CreateRequest, requestID string) (idempotency.Response, error)
	Get(ctx context.Context, clientID, id string) (payments.Payment, error)
	List(ctx context.Context, clientID string, limit int, startingAfter string) (payments.Page, error)
	Refund(ctx context.Context, req idempotency.Request, paymentID string, body payments.RefundRequest, requestID string) (idempotency.Response, error)
	Refunds(ctx context.Context, clientID, paymentID string) ([]payments.Refund, error)
}

// Config is what the payment routes need.
type Config struct {
	Service Service
	Guard   *idempotency.Guard
	Log     *slog.Logger
}

// Routes mounts the payment routes on r (the router's /v1).
func Routes(c Config) func(r chi.Router) {
	h := &handlers{svc: c.Service, log: c.Log}
	return func(r chi.Router) {
		r.Post("/payments", idempotency.Handle(c.Guard, idempotency.Route[payments.CreateRequest]{
			Pattern:  "/v1/payments",
			Validate: (*payments.CreateRequest).Validate,
			Do: func(ctx context.Context, req idempotency.Request, body *payments.CreateRequest) (idempotency.Response, error) {
				return h.svc.Create(ctx, req, *body, web.RequestID(ctx))
			},
			Fail: h.fail,
		}))
		r.Get("/payments", h.list)
		r.Get("/payments/{id}", h.get)
		r.Post("/payments/{id}/refunds", idempotency.Handle(c.Guard, idempotency.Route[payments.RefundRequest]{
			Pattern:  "/v1/payments/{id}/refunds",
			Validate: (*payments.RefundRequest).Validate,
			Do: func(ctx context.Context, req idempotency.Request, body *payments.RefundRequest) (idempotency.Response, error) {
				return h.svc.Refund(ctx, req, chi.URLParamFromCtx(ctx, "id"), *body, web.RequestID(ctx))
			},
			Fail: h.fail,
		}))
		r.Get("/payments/{id}/refunds", h.refunds)
	}
}

// Views render a payment's and a refund's answers. The service stores the
// final ones with their keys, so this is the format of every replay too.
type Views struct {
	// ProblemTypes prefixes the type URI of problems stored with a
	// payment (a decline), rendered away from any request: the router's.
	ProblemTypes string
}

var _ payments.Views = Views{}

// paymentJSON is a payment as the API shows it.
type paymentJSON struct {
	ID               string            `json:"id"`
	Amount           int64             `json:"amount"`
	AmountRefunded   int64             `json:"amount_refunded"`
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
		ID:             p.ID,
		Amount:         p.Amount,
		AmountRefunded: p.AmountRefunded,
		Currency:       p.Currency,
		Status:         string(p.Status),
		Description:    p.Description,
		Metadata:       p.Metadata,
		FailureCode:    p.FailureCode,
		CreatedAt:      p.CreatedAt.UTC().Format(time.RFC3339Nano),
		UpdatedAt:      p.UpdatedAt.UTC().Format(time.RFC3339Nano),
	}
	if v.Metadata == nil {
		v.Metadata = map[string]string{} // always an object, never null
	}
	if p.ProviderChargeID != "" {
		v.ProviderChargeID = &p.ProviderChargeID
	}
	return v
}

// paymentProblem is the 402 answer: a problem with the failed payment.
type paymentProblem struct {
	web.Problem
	Payment *paymentJSON `json:"payment,omitempty"`
}

// Payment renders the answer to a payment request: 201 with the payment
// when charged, 402 problem+json with the payment when it failed, 202 with
// the payment while its outcome is unknown.
func (v Views) Payment(p payments.Payment, requestID string) (idempotency.Response, error) {
	view := viewPayment(p)
	var body any = view
	header := http.Header{"Content-Type": {"application/json"}}
	status := http.StatusAccepted
	switch p.Status {
	case payments.StatusSucceeded:
		status = http.StatusCreated
		header.Set("Location", "/v1/payments/"+p.ID)
	case payments.StatusFailed:
		status = http.StatusPaymentRequired
		header.Set("Content-Type", "application/problem+json")
		prob := web.ProblemFor(v.ProblemTypes, probDeclined, "The payment was declined: "+p.FailureCode+".", requestID)
		if p.FailureCode == payments.FailureNoCharge {
			prob = web.ProblemFor(v.ProblemTypes, probPaymentFailed, "The provider never received the charge; nothing was paid. Retry with a new Idempotency-Key.", requestID)
		}
		body = paymentProblem{Problem: prob, Payment: &view}
	default:
		header.Set("Location", "/v1/payments/"+p.ID)
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return idempotency.Response{}, fmt.Errorf("render payment %s: %w", p.ID, err)
	}
	return idempotency.Response{Status: status, Header: header, Body: raw}, nil
}

// refundJSON is a refund as the API shows it.
type refundJSON struct {
	ID               string  `json:"id"`
	PaymentID        string  `json:"payment_id"`
	Amount           int64   `json:"amount"`
	Status           string  `json:"status"`
	Reason           string  `json:"reason"`
	ProviderRefundID *string `json:"provider_refund_id"`
	FailureCode      string  `json:"failure_code,omitempty"`
	CreatedAt        string  `json:"created_at"`
	UpdatedAt        string  `json:"updated_at"`
}

func viewRefund(r payments.Refund) refundJSON {
	v := refundJSON{
		ID:          r.ID,
		PaymentID:   r.PaymentID,
		Amount:      r.Amount,
		Status:      string(r.Status),
		Reason:      r.Reason,
		FailureCode: r.FailureCode,
		CreatedAt:   r.CreatedAt.UTC().Format(time.RFC3339Nano),
		UpdatedAt:   r.UpdatedAt.UTC().Format(time.RFC3339Nano),
	}
	if r.ProviderRefundID != "" {
		v.ProviderRefundID = &r.ProviderRefundID
	}
	return v
}

// refundProblem is the answer to a refund the provider refused: a problem
// with the failed refund.
type refundProblem struct {
	web.Problem
	Refund *refundJSON `json:"refund,omitempty"`
}

// Refund renders the answer to a refund request: 201 with the refund when
// refunded, 422 problem+json with it when the provider refused it, 202
// while its outcome is unknown.
func (v Views) Refund(r payments.Refund, requestID string) (idempotency.Response, error) {
	view := viewRefund(r)
	var body any = view
	header := http.Header{"Content-Type": {"application/json"}}
	status := http.StatusAccepted
	switch r.Status {
	case payments.StatusSucceeded:
		status = http.StatusCreated
	case payments.StatusFailed:
		status = http.StatusUnprocessableEntity
		header.Set("Content-Type", "application/problem+json")
		detail := "The provider refused the refund: " + r.FailureCode + ". Nothing was refunded."
		if r.FailureCode == payments.FailureNoRefund {
			detail = "The provider never made the refund; nothing was refunded. Retry with a new Idempotency-Key."
		}
		body = refundProblem{Problem: web.ProblemFor(v.ProblemTypes, probRefundFailed, detail, requestID), Refund: &view}
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return idempotency.Response{}, fmt.Errorf("render refund %s: %w", r.ID, err)
	}
	return idempotency.Response{Status: status, Header: header, Body: raw}, nil
}

type handlers struct {
	svc Service
	log *slog.Logger
}

// get handles GET /v1/payments/{id}.
func (h *handlers) get(w http.ResponseWriter, r *http.Request) {
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
func (h *handlers) list(w http.ResponseWriter, r *http.Request) {
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

// refunds handles GET /v1/payments/{id}/refunds.
func (h *handlers) refunds(w http.ResponseWriter, r *http.Request) {
	refunds, err := h.svc.Refunds(r.Context(), web.ClientID(r.Context()), chi.URLParam(r, "id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := struct {
		Data []refundJSON `json:"data"`
	}{Data: make([]refundJSON, len(refunds))}
	for i, rf := range refunds {
		out.Data[i] = viewRefund(rf)
	}
	web.WriteJSON(w, http.StatusOK, out)
}

// fail maps a service error to its problem. Unknown errors are 500s and
// are logged; expected ones are not, or the log would drown in them.
func (h *handlers) fail(w http.ResponseWriter, r *http.Request, err error) {
	var (
		invalid  *payments.ValidationError
		tooLarge *payments.RefundTooLargeError
	)
	switch {
	case errors.As(err, &invalid):
		prob := web.NewProblem(r, probInvalid, invalid.Error())
		for _, fe := range invalid.Errors {
			prob.Errors = append(prob.Errors, web.FieldError{Field: fe.Field, Message: fe.Message})
		}
		web.WriteProblemBody(w, prob.Status, prob)
	case errors.Is(err, payments.ErrNotFound):
		web.WriteProblem(w, r, web.NotFound, "No such payment.")
	case errors.Is(err, payments.ErrBadCursor):
		web.WriteProblem(w, r, web.BadQuery, "starting_after must be the id of one of your payments.")
	case errors.Is(err, payments.ErrNotRefundable):
		web.WriteProblem(w, r, probNotRefundable, "Only a succeeded payment can be refunded; this one has not succeeded.")
	case errors.As(err, &tooLarge):
		web.WriteProblem(w, r, probTooLarge, fmt.Sprintf("The refund of %d is larger than the %d left to refund of the payment.", tooLarge.Requested, tooLarge.Left))
	case errors.Is(err, payments.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		h.log.WarnContext(r.Context(), "dependency unavailable", "err", err, "request_id", web.RequestID(r.Context()))
		web.WriteProblemRetry(w, r, web.Unavailable, "A dependency is unavailable. Retry later with the same Idempotency-Key.", time.Second)
	default:
		web.LogError(h.log, r, "request failed", err)
		web.WriteProblem(w, r, web.Internal, "The server failed unexpectedly; quote the request id when reporting it.")
	}
}
