// Package provider is the HTTP client of the payment provider.
//
// Its job is to turn every HTTP exchange into one of three outcomes a payment
// can act on: an answer (charged or declined), a failure that certainly did
// not charge (the request was never sent), or a failure whose outcome is
// unknown (the request may have reached the provider). Getting this right is
// what lets the service retry safely: every charge carries the payment id as
// the provider's idempotency key, so repeating an unknown outcome can only
// return the original charge, never make a second one.
//
// The client does one attempt per call, bounded by its own timeout. Retries,
// the circuit breaker and the other protections of internal/resilience wrap
// it from outside, behind the same methods, so this file stays about HTTP and
// nothing else.
package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	oteltrace "go.opentelemetry.io/otel/trace"
)

// Charge statuses the provider answers with.
const (
	ChargeSucceeded = "succeeded"
	ChargeDeclined  = "declined"
)

// Refund statuses: the provider's own, and RefundRefused for a refund it
// answered with a definite no (a 4xx), which refunded nothing.
const (
	RefundSucceeded = "succeeded"
	RefundRefused   = "refused"
)

// ChargeRequest asks the provider to charge. IdempotencyKey must be stable
// across retries of the same payment: payservice uses the payment id.
type ChargeRequest struct {
	IdempotencyKey string
	Amount         int64
	Currency       string
	Reference      string
}

// Charge is the provider's record of a charge attempt. A declined charge is
// an answer, not an error.
type Charge struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
	Reference string `json:"reference"`
	Code      string `json:"code,omitempty"` // why it was declined
}

// RefundRequest asks the provider to give back part or all of a charge.
// IdempotencyKey must be stable across retries of the same refund:
// payservice uses the refund id.
type RefundRequest struct {
	IdempotencyKey string
	Charge         string
	Amount         int64
	Reference      string
}

// Refund is the provider's record of a refund attempt. A refusal is an
// answer, not an error: Status RefundRefused, with the provider's Code.
type Refund struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	Charge    string `json:"charge"`
	Amount    int64  `json:"amount"`
	Reference string `json:"reference"`
	Code      string `json:"code,omitempty"` // why it was refused
}

// Sentinels for the two ways a call can fail. Every error the client returns
// matches exactly one of them with errors.Is.
var (
	// ErrNotSent means the request never left this process, or never
	// reached the provider: nothing can have been charged.
	ErrNotSent = errors.New("provider request not sent")
	// ErrOutcomeUnknown means the request may have reached the provider
	// and we did not get a definite answer: it may or may not have charged.
	ErrOutcomeUnknown = errors.New("provider outcome unknown")
)

// Error describes a failed provider call.
type Error struct {
	Op         string        // "charge", "find charge", "refund" or "find refund"
	StatusCode int           // HTTP status, or 0 when there was no response
	Code       string        // the provider's error code, if it gave one
	RetryAfter time.Duration // from the Retry-After header, 0 when absent
	Sent       bool          // whether the request may have reached the provider
	Timeout    bool          // whether the attempt's own timeout expired
	Err        error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "provider %s", e.Op)
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": status %d", e.StatusCode)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if !e.Sent {
		b.WriteString(" (not sent)")
	}
	return b.String()
}

// Unwrap exposes the cause and the outcome sentinel, so both
// errors.Is(err, context.Canceled) and errors.Is(err, ErrNotSent) work.
func (e *Error) Unwrap() []error {
	outcome := ErrOutcomeUnknown
	if !e.Sent {
		outcome = ErrNotSent
	}
	if e.Err == nil {
		return []error{outcome}
	}
	return []error{e.Err, outcome}
}

// Config configures a Client.
type Config struct {
	BaseURL        string        // e.g. http://fakeprovider:8081
	AttemptTimeout time.Duration // bound on one HTTP exchange
	HTTPClient     *http.Client  // optional; its Timeout is ignored in favour of AttemptTimeout
	// Propagator, when set, traces the exchanges: each request carries the
	// trace context of its ctx (a traceparent header), and the span in
	// its ctx, if recording (Resilient's attempt), gets the HTTP details.
	Propagator propagation.TextMapPropagator
}

// Client calls the provider's HTTP API, one attempt per call.
type Client struct {
	base       *url.URL
	http       *http.Client
	timeout    time.Duration
	propagator propagation.TextMapPropagator // nil: not traced
}

// NewClient returns a client for the provider at cfg.BaseURL.
func NewClient(cfg Config) (*Client, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.BaseURL, "/"))
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("provider base URL %q is not an absolute URL", cfg.BaseURL)
	}
	if cfg.AttemptTimeout <= 0 {
		return nil, fmt.Errorf("provider attempt timeout must be positive, got %s", cfg.AttemptTimeout)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// The provider is one host: let every worker keep a warm connection.
		t.MaxIdleConnsPerHost = 64
		hc = &http.Client{Transport: t}
	}
	return &Client{base: base, http: hc, timeout: cfg.AttemptTimeout, propagator: cfg.Propagator}, nil
}

// Charge asks the provider to charge. It returns the charge (succeeded or
// declined) or an *Error matching ErrNotSent or ErrOutcomeUnknown.
func (c *Client) Charge(ctx context.Context, req ChargeRequest) (Charge, error) {
	body, err := json.Marshal(map[string]any{
		"amount": req.Amount, "currency": req.Currency, "reference": req.Reference, "expires_at": c.expiry(ctx),
	})
	if err != nil {
		return Charge{}, &Error{Op: "charge", Err: err}
	}
	header := http.Header{"Idempotency-Key": {req.IdempotencyKey}, "Content-Type": {"application/json"}}
	var charge Charge
	err = c.do(ctx, "charge", http.MethodPost, "/v1/charges", header, body, &charge, http.StatusCreated, http.StatusPaymentRequired)
	return charge, err
}

// CodeExpired is the provider's error code for a request that reached its
// turn after its expires_at: it did nothing.
const CodeExpired = "request_expired"

// expiry is the latest time the provider may carry out a request sent now:
// the attempt's own deadline. Without it, a request the provider takes up
// late (it sat in the provider's backlog, or this process froze before it
// left) could charge after the reconciler, finding no charge, has failed
// the payment: an absence proves nothing while the request may still run.
// With it, once the expiry has passed, no charge means none ever will be
// (the reconciler's grace outlasts every attempt's deadline; the clocks of
// the service and the provider must agree to within that margin).
func (c *Client) expiry(ctx context.Context) time.Time {
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadline.UTC()
}

// FindCharge looks up the charge made with an idempotency key. found is
// false when the provider has no such charge: then it was never made.
func (c *Client) FindCharge(ctx context.Context, idempotencyKey string) (charge Charge, found bool, err error) {
	var list struct {
		Data []Charge `json:"data"`
	}
	path := "/v1/charges?idempotency_key=" + url.QueryEscape(idempotencyKey)
	if err := c.do(ctx, "find charge", http.MethodGet, path, nil, nil, &list, http.StatusOK); err != nil {
		return Charge{}, false, err
	}
	if len(list.Data) == 0 {
		return Charge{}, false, nil
	}
	return list.Data[0], true, nil
}

// Refund asks the provider to refund. It returns the refund (succeeded, or
// refused by a 4xx answer other than 429, which refunded nothing) or an
// *Error matching ErrNotSent or ErrOutcomeUnknown.
func (c *Client) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	body, err := json.Marshal(map[string]any{
		"charge": req.Charge, "amount": req.Amount, "reference": req.Reference, "expires_at": c.expiry(ctx),
	})
	if err != nil {
		return Refund{}, &Error{Op: "refund", Err: err}
	}
	header := http.Header{"Idempotency-Key": {req.IdempotencyKey}, "Content-Type": {"application/json"}}
	var refund Refund
	err = c.do(ctx, "refund", http.MethodPost, "/v1/refunds", header, body, &refund, http.StatusCreated)
	var perr *Error
	if errors.As(err, &perr) && perr.StatusCode >= 400 && perr.StatusCode < 500 &&
		perr.StatusCode != http.StatusTooManyRequests && perr.Code != CodeExpired {
		return Refund{Status: RefundRefused, Charge: req.Charge, Amount: req.Amount, Reference: req.Reference, Code: perr.Code}, nil
	}
	return refund, err
}

// FindRefund looks up the refund made with an idempotency key. found is
// false when the provider has none: then it was never made (or refused).
func (c *Client) FindRefund(ctx context.Context, idempotencyKey string) (refund Refund, found bool, err error) {
	var list struct {
		Data []Refund `json:"data"`
	}
	path := "/v1/refunds?idempotency_key=" + url.QueryEscape(idempotencyKey)
	if err := c.do(ctx, "find refund", http.MethodGet, path, nil, nil, &list, http.StatusOK); err != nil {
		return Refund{}, false, err
	}
	if len(list.Data) == 0 {
		return Refund{}, false, nil
	}
	return list.Data[0], true, nil
}

// maxResponseBytes bounds what we read from the provider: a misbehaving
// dependency must not be able to exhaust our memory.
const maxResponseBytes = 1 << 20

// do performs one HTTP exchange and decodes a JSON answer with one of the
// accepted statuses into out.
func (c *Client) do(ctx context.Context, op, method, path string, header http.Header, body []byte, out any, accept ...int) error {
	attemptCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// Whether the request may have reached the provider decides whether a
	// failure is safe (nothing charged) or ambiguous. Once the headers are
	// written we must assume the provider saw them.
	var sent atomic.Bool
	trace := &httptrace.ClientTrace{WroteHeaders: func() { sent.Store(true) }}
	attemptCtx = httptrace.WithClientTrace(attemptCtx, trace)

	req, err := http.NewRequestWithContext(attemptCtx, method, c.base.String()+path, bytes.NewReader(body))
	if err != nil {
		return &Error{Op: op, Err: err}
	}
	req.Header = header
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Accept", "application/json")
	if c.propagator != nil {
		c.propagator.Inject(attemptCtx, propagation.HeaderCarrier(req.Header))
		oteltrace.SpanFromContext(ctx).SetAttributes(requestAttributes(req)...)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		// The caller's cancellation is reported as such (ctx.Err), so that
		// callers can tell it from the provider being slow.
		timeout := ctx.Err() == nil && errors.Is(attemptCtx.Err(), context.DeadlineExceeded)
		if ctx.Err() != nil {
			// %v: the transport's error may itself wrap the attempt's
			// DeadlineExceeded, which must not pass for the caller's.
			err = fmt.Errorf("%w (%v)", ctx.Err(), err) //nolint:errorlint // see above
		}
		return &Error{Op: op, Sent: sent.Load(), Timeout: timeout, Err: err}
	}
	defer resp.Body.Close()
	if c.propagator != nil {
		oteltrace.SpanFromContext(ctx).SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
	}

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		timeout := ctx.Err() == nil && errors.Is(attemptCtx.Err(), context.DeadlineExceeded)
		return &Error{Op: op, StatusCode: resp.StatusCode, Sent: true, Timeout: timeout, Err: fmt.Errorf("read response: %w", err)}
	}
	for _, status := range accept {
		if resp.StatusCode == status {
			if err := json.Unmarshal(data, out); err != nil {
				return &Error{Op: op, StatusCode: resp.StatusCode, Sent: true, Err: fmt.Errorf("decode response: %w", err)}
			}
			return nil
		}
	}
	var problem struct {
		Code string `json:"error"`
	}
	_ = json.Unmarshal(data, &problem) // a code if the provider gave one
	return &Error{
		Op:         op,
		StatusCode: resp.StatusCode,
		Code:       problem.Code,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		// An expired request did nothing: as safe as one never sent.
		Sent: problem.Code != CodeExpired,
		Err:  fmt.Errorf("unexpected answer: %s", snippet(data)),
	}
}

// requestAttributes describe req for its span, as OpenTelemetry's HTTP
// conventions name them; the query, which holds idempotency keys, is left
// out of the URL.
func requestAttributes(req *http.Request) []attribute.KeyValue {
	u := *req.URL
	u.RawQuery = ""
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(req.Method),
		semconv.URLFull(u.Redacted()),
		semconv.ServerAddress(u.Hostname()),
	}
	if port, err := strconv.Atoi(u.Port()); err == nil {
		attrs = append(attrs, semconv.ServerPort(port))
	}
	return attrs
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110 §10.2.3). It returns 0 when the header is absent or invalid.
//
// A delay too long for a time.Duration (about 292 years) saturates at the
// longest one. Multiplied out, it would wrap around to a negative
// duration: below any cap on how long we wait, and read as "retry now".
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	// delay-seconds is 1*DIGIT, which ParseUint accepts, and no more (no
	// sign). On a number too large for a uint64 it reports ErrRange as soon
	// as it overflows, before it has seen the rest: "99…9 seconds" too.
	// Hence the digits are checked first.
	if !allDigits(v) {
		// Not delay-seconds: an HTTP-date, or nothing valid.
	} else if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs > uint64(math.MaxInt64/time.Second) {
			return math.MaxInt64
		}
		return time.Duration(secs) * time.Second
	}
	if at, err := http.ParseTime(v); err == nil && at.After(now) {
		return at.Sub(now)
	}
	return 0
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// snippet shortens a response body for an error message.
func snippet(b []byte) string {
	const max = 200
	s := strings.TrimSpace(string(b))
	if len(s) > max {
		s = s[:max] + "…"
	}
	if s == "" {
		return "(empty body)"
	}
	return s
}
