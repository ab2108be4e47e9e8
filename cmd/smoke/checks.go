package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// client sends requests to the service and reads whole answers.
type client struct {
	baseURL, apiKey string
	http            *http.Client
}

// call is one request. A body is sent as JSON.
type call struct {
	method, path, body string
	idempotencyKey     string // sent when set
	anonymous          bool   // no Authorization header
}

// response is an answer with its body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (c *client) do(ctx context.Context, r call) (response, error) {
	req, err := http.NewRequestWithContext(ctx, r.method, c.baseURL+r.path, strings.NewReader(r.body))
	if err != nil {
		return response{}, err
	}
	if !r.anonymous {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	if r.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.idempotencyKey != "" {
		req.Header.Set("Idempotency-Key", r.idempotencyKey)
	}
	resp, err := c.http.Do(req) // its errors name the method and URL
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // any sane answer is far smaller
	if err != nil {
		return response{}, fmt.Errorf("%s %s: read body: %w", r.method, req.URL, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// payment holds the fields of a payment that the steps check.
type payment struct {
	ID               string `json:"id"`
	Status           string `json:"status"`
	ProviderChargeID string `json:"provider_charge_id"`
	AmountRefunded   int64  `json:"amount_refunded"`
}

// refund holds the fields of a refund that the steps check.
type refund struct {
	ID        string `json:"id"`
	PaymentID string `json:"payment_id"`
	Amount    int64  `json:"amount"`
	Status    string `json:"status"`
}

// checker runs the steps. Later steps check what earlier ones created.
type checker struct {
	api     *client
	key     string   // Idempotency-Key of the payment created, and replayed
	created response // the first answer to it
	id      string   // the payment it created

	refundKey string   // Idempotency-Key of the refund of it
	refunded  response // the first answer to it
	refundID  string
}

// readiness waits for /health/ready to answer 200 with every check ok: the
// stack may still be starting when smoke runs.
func (c *checker) readiness(ctx context.Context) error {
	var last error
	for {
		res, err := c.api.do(ctx, call{method: http.MethodGet, path: "/health/ready"})
		if err == nil {
			err = readyWithAllChecksOK(res)
		}
		if err == nil {
			return nil
		}
		if last == nil || ctx.Err() == nil { // report the last answer, not the timeout cutting a request
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within the timeout; last: %w", last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func readyWithAllChecksOK(res response) error {
	if err := wantStatus(res, http.StatusOK); err != nil {
		return err
	}
	var body struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := decode(res, &body); err != nil {
		return err
	}
	if body.Status != "ok" || len(body.Checks) == 0 {
		return fmt.Errorf("status %q with checks %v, want ok with at least one check", body.Status, body.Checks)
	}
	for name, state := range body.Checks {
		if state != "ok" {
			return fmt.Errorf("check %s is %q, want ok", name, state)
		}
	}
	return nil
}

// createCall is sent twice with the same Idempotency-Key: the second answer
// must be the first one, replayed.
func (c *checker) createCall() call {
	return call{
		method: http.MethodPost, path: "/v1/payments", idempotencyKey: c.key,
		body: `{"amount": 1000, "currency": "usd", "description": "smoke test", "metadata": {"source": "cmd/smoke"}}`,
	}
}

func (c *checker) create(ctx context.Context) error {
	c.key = "smoke-" + rand.Text() // fresh per run: a reused key would replay an old payment
	res, err := c.api.do(ctx, c.createCall())
	if err != nil {
		return err
	}
	p, err := wantPayment(res, http.StatusCreated, "succeeded")
	if err != nil {
		return err
	}
	if p.ProviderChargeID == "" {
		return fmt.Errorf("provider_charge_id is not set: %s", res.body)
	}
	c.created, c.id = res, p.ID
	return nil
}

func (c *checker) replay(ctx context.Context) error {
	res, err := c.api.do(ctx, c.createCall())
	if err != nil {
		return err
	}
	p, err := wantPayment(res, http.StatusCreated, "succeeded")
	if err != nil {
		return err
	}
	if got := res.header.Get("Idempotent-Replayed"); got != "true" {
		return fmt.Errorf("header Idempotent-Replayed = %q, want true", got)
	}
	if p.ID != c.id {
		return fmt.Errorf("payment %s, want the first request's %s (charged twice?)", p.ID, c.id)
	}
	if !bytes.Equal(res.body, c.created.body) {
		return fmt.Errorf("body is not the first answer byte for byte:\n  first:  %s\n  replay: %s", c.created.body, res.body)
	}
	return nil
}

func (c *checker) get(ctx context.Context) error {
	res, err := c.api.do(ctx, call{method: http.MethodGet, path: "/v1/payments/" + url.PathEscape(c.id)})
	if err != nil {
		return err
	}
	p, err := wantPayment(res, http.StatusOK, "succeeded")
	if err == nil && p.ID != c.id {
		err = fmt.Errorf("got payment %s, want %s", p.ID, c.id)
	}
	return err
}

func (c *checker) list(ctx context.Context) error {
	res, err := c.api.do(ctx, call{method: http.MethodGet, path: "/v1/payments?limit=100"})
	if err != nil {
		return err
	}
	if err := wantStatus(res, http.StatusOK); err != nil {
		return err
	}
	var page struct {
		Data []payment `json:"data"`
	}
	if err := decode(res, &page); err != nil {
		return err
	}
	// Newest first: the payment just created is on the first page.
	if !slices.ContainsFunc(page.Data, func(p payment) bool { return p.ID == c.id }) {
		return fmt.Errorf("payment %s is not among the %d newest", c.id, len(page.Data))
	}
	return nil
}

// refundCall gives back 400 of the payment's 1000.
func (c *checker) refundCall() call {
	return call{
		method: http.MethodPost, path: "/v1/payments/" + url.PathEscape(c.id) + "/refunds", idempotencyKey: c.refundKey,
		body: `{"amount": 400, "reason": "smoke test"}`,
	}
}

func (c *checker) refund(ctx context.Context) error {
	c.refundKey = "smoke-" + rand.Text()
	res, err := c.api.do(ctx, c.refundCall())
	if err != nil {
		return err
	}
	if err := wantStatus(res, http.StatusCreated); err != nil {
		return err
	}
	var r refund
	if err := decode(res, &r); err != nil {
		return err
	}
	if r.ID == "" || r.Status != "succeeded" || r.PaymentID != c.id || r.Amount != 400 {
		return fmt.Errorf("want a succeeded refund of 400 of payment %s: %s", c.id, res.body)
	}
	c.refunded, c.refundID = res, r.ID
	return nil
}

func (c *checker) refundReplay(ctx context.Context) error {
	res, err := c.api.do(ctx, c.refundCall())
	if err != nil {
		return err
	}
	if err := wantStatus(res, http.StatusCreated); err != nil {
		return err
	}
	if got := res.header.Get("Idempotent-Replayed"); got != "true" {
		return fmt.Errorf("header Idempotent-Replayed = %q, want true", got)
	}
	if !bytes.Equal(res.body, c.refunded.body) {
		return fmt.Errorf("body is not the first answer byte for byte:\n  first:  %s\n  replay: %s", c.refunded.body, res.body)
	}
	return nil
}

// overRefund asks for more than the 600 left: refused, nothing refunded.
func (c *checker) overRefund(ctx context.Context) error {
	res, err := c.api.do(ctx, call{
		method: http.MethodPost, path: "/v1/payments/" + url.PathEscape(c.id) + "/refunds", idempotencyKey: "smoke-" + rand.Text(),
		body: `{"amount": 601}`,
	})
	if err != nil {
		return err
	}
	if err := wantProblem(res, http.StatusUnprocessableEntity); err != nil {
		return err
	}
	var prob struct{ Type string }
	if err := decode(res, &prob); err != nil {
		return err
	}
	if !strings.HasSuffix(prob.Type, "/refund-too-large") {
		return fmt.Errorf("problem type %q, want one ending /refund-too-large", prob.Type)
	}
	return nil
}

func (c *checker) listRefunds(ctx context.Context) error {
	res, err := c.api.do(ctx, call{method: http.MethodGet, path: "/v1/payments/" + url.PathEscape(c.id) + "/refunds"})
	if err != nil {
		return err
	}
	if err := wantStatus(res, http.StatusOK); err != nil {
		return err
	}
	var list struct {
		Data []refund `json:"data"`
	}
	if err := decode(res, &list); err != nil {
		return err
	}
	if len(list.Data) != 1 || list.Data[0].ID != c.refundID {
		return fmt.Errorf("want the one refund %s: %s", c.refundID, res.body)
	}
	res, err = c.api.do(ctx, call{method: http.MethodGet, path: "/v1/payments/" + url.PathEscape(c.id)})
	if err != nil {
		return err
	}
	p, err := wantPayment(res, http.StatusOK, "succeeded")
	if err == nil && p.AmountRefunded != 400 {
		err = fmt.Errorf("amount_refunded %d, want 400: %s", p.AmountRefunded, res.body)
	}
	return err
}

// decline pays an amount the fake provider declines (last digits 402).
func (c *checker) decline(ctx context.Context) error {
	res, err := c.api.do(ctx, call{
		method: http.MethodPost, path: "/v1/payments", idempotencyKey: "smoke-" + rand.Text(),
		body: `{"amount": 1402, "currency": "usd"}`,
	})
	if err != nil {
		return err
	}
	if err := wantProblem(res, http.StatusPaymentRequired); err != nil {
		return err
	}
	var body struct {
		Payment *payment `json:"payment"`
	}
	if err := decode(res, &body); err != nil {
		return err
	}
	if body.Payment == nil || body.Payment.Status != "failed" {
		return fmt.Errorf("want the problem to carry the payment with status failed: %s", res.body)
	}
	return nil
}

func (c *checker) unauthenticated(ctx context.Context) error {
	res, err := c.api.do(ctx, call{method: http.MethodGet, path: "/v1/payments", anonymous: true})
	if err != nil {
		return err
	}
	if err := wantProblem(res, http.StatusUnauthorized); err != nil {
		return err
	}
	if got := res.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
		return fmt.Errorf("header WWW-Authenticate = %q, want a Bearer challenge", got)
	}
	return nil
}

func wantStatus(res response, want int) error {
	if res.status != want {
		return fmt.Errorf("status %d, want %d: %s", res.status, want, res.body)
	}
	return nil
}

func wantPayment(res response, status int, state string) (payment, error) {
	var p payment
	if err := wantStatus(res, status); err != nil {
		return p, err
	}
	if err := decode(res, &p); err != nil {
		return p, err
	}
	if p.ID == "" || p.Status != state {
		return p, fmt.Errorf("want a payment with an id and status %s: %s", state, res.body)
	}
	return p, nil
}

func wantProblem(res response, status int) error {
	if err := wantStatus(res, status); err != nil {
		return err
	}
	ct := res.header.Get("Content-Type")
	if mt, _, _ := mime.ParseMediaType(ct); mt != "application/problem+json" {
		return fmt.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	return nil
}

func decode(res response, v any) error {
	if err := json.Unmarshal(res.body, v); err != nil {
		return fmt.Errorf("decode %q: %w", res.body, err)
	}
	return nil
}
