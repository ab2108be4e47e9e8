// Package payments is the example domain: what a payment and a refund are,
// which requests are valid, and how creating one drives the provider to
// exactly one charge or refund. It is one vertical slice: its Postgres
// store (paymentsdb), HTTP routes (paymentsapi), provider client
// (provider) and fake provider (fakeprovider) are its subpackages.
//
// The service here decides; it does no HTTP and no SQL itself, and reaches
// storage through the Store it defines. Its rule for money is the one the
// whole template is built to show: a payment or a refund is made at most
// once and never lost. Its row is written with its idempotency key's record
// (the platform's idempotency package) before the provider is called, and
// the provider is always called with the row's id as its idempotency key,
// so any retry — by the client, by the service, or by a replica after a
// crash — can only meet the original charge or refund.
package payments

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Status is a payment's state: processing → succeeded | failed. Final
// states never change.
type Status string

const (
	StatusProcessing Status = "processing"
	StatusSucceeded  Status = "succeeded"
	StatusFailed     Status = "failed"
)

// Payment is a payment as clients see it.
type Payment struct {
	ID               string
	ClientID         string
	Amount           int64
	Currency         string
	Status           Status
	Description      string
	Metadata         map[string]string
	ProviderChargeID string // empty until the provider answered
	FailureCode      string // why it failed, e.g. card_declined
	// AmountRefunded is the sum of its succeeded refunds. With the
	// refunds in progress, it never exceeds Amount.
	AmountRefunded int64
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// Limits of a payment request, part of the API's contract.
const (
	MinAmount        = 1
	MaxAmount        = 99_999_999
	MaxDescription   = 500 // characters
	MaxMetadataKeys  = 20
	MaxMetadataKey   = 40  // characters
	MaxMetadataValue = 500 // characters
)

// CreateRequest is what a client asks for. The API layer decodes it; Validate
// decides whether it makes sense.
type CreateRequest struct {
	Amount      int64    `json:"amount"`
	Currency    string   `json:"currency"`
	Description string   `json:"description"`
	Metadata    Metadata `json:"metadata"`
}

// Metadata is a request's string map. It decodes like map[string]string
// but refuses null values, which encoding/json would silently turn into
// empty strings: a client's data is stored as sent, or refused.
type Metadata map[string]string

// UnmarshalJSON decodes a JSON object of strings; null as a whole means no
// metadata.
func (m *Metadata) UnmarshalJSON(b []byte) error {
	var raw map[string]*string
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		*m = nil
		return nil
	}
	out := make(Metadata, len(raw))
	for k, v := range raw {
		if v == nil {
			// The decoder adds the field's path, as for any type error.
			return &json.UnmarshalTypeError{Value: "null", Type: reflect.TypeFor[string]()}
		}
		out[k] = *v
	}
	*m = out
	return nil
}

// FieldError is one semantic problem with a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// ValidationError lists every semantic problem with a request, so a client
// can fix them all at once.
type ValidationError struct {
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Field + ": " + fe.Message
	}
	return "invalid request: " + strings.Join(msgs, "; ")
}

// Validate checks the request's semantics and normalises the currency to
// lower case. Syntax (JSON, types, unknown fields) is the decoder's job.
func (r *CreateRequest) Validate() error {
	var errs []FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}

	if r.Amount < MinAmount || r.Amount > MaxAmount {
		add("amount", "must be an integer number of minor units between %d and %d", MinAmount, MaxAmount)
	}
	// Lower-case ASCII only: strings.ToLower would turn the Kelvin sign
	// (U+212A) into a "k" and accept "\u212AES" as kes.
	r.Currency = asciiLower(r.Currency)
	switch {
	case r.Currency == "":
		add("currency", "is required")
	case !isCurrency(r.Currency):
		add("currency", "%q is not an ISO 4217 currency code", r.Currency)
	}
	if n := utf8.RuneCountInString(r.Description); n > MaxDescription {
		add("description", "has %d characters, more than %d", n, MaxDescription)
	}
	if !storable(r.Description) {
		add("description", "must not contain NUL characters")
	}
	if len(r.Metadata) > MaxMetadataKeys {
		add("metadata", "has %d keys, more than %d", len(r.Metadata), MaxMetadataKeys)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Metadata)) {
		v := r.Metadata[k]
		if n := utf8.RuneCountInString(k); n == 0 || n > MaxMetadataKey {
			add("metadata", "key %q must have 1 to %d characters", k, MaxMetadataKey)
		}
		if n := utf8.RuneCountInString(v); n > MaxMetadataValue {
			add("metadata", "value of %q has %d characters, more than %d", k, n, MaxMetadataValue)
		}
		if !storable(k) || !storable(v) {
			add("metadata", "key and value of %q must not contain NUL characters", k)
		}
	}
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}

// storable reports whether Postgres can store s as text: valid UTF-8
// without NUL bytes. JSON can carry "\u0000"; a text or jsonb column
// cannot, and the insert would fail as if the database were down.
func storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// asciiLower lower-cases the ASCII letters of s and nothing else.
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}
