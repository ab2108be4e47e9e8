package payments

import (
	"fmt"
	"time"
	"unicode/utf8"
)

// Refund gives back part or all of a succeeded payment. States as for a
// payment: processing → succeeded | failed, and final states never change.
// A refund is failed only when the provider refused it.
type Refund struct {
	ID               string
	PaymentID        string
	ClientID         string
	Amount           int64
	Status           Status
	Reason           string
	ChargeID         string // the provider's charge it gives back from
	ProviderRefundID string // empty until the provider answered
	FailureCode      string // why the provider refused it
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// MaxReason is the longest refund reason, in characters.
const MaxReason = 200

// RefundRequest is what a client asks for. Validate checks what can be
// checked without the payment; whether that much is left to refund is the
// store's to decide, under the payment's row lock.
type RefundRequest struct {
	Amount int64  `json:"amount"`
	Reason string `json:"reason"`
}

// Validate checks the request's semantics.
func (r *RefundRequest) Validate() error {
	var errs []FieldError
	if r.Amount < MinAmount || r.Amount > MaxAmount {
		errs = append(errs, FieldError{"amount", fmt.Sprintf("must be an integer number of minor units between %d and %d", MinAmount, MaxAmount)})
	}
	if n := utf8.RuneCountInString(r.Reason); n > MaxReason {
		errs = append(errs, FieldError{"reason", fmt.Sprintf("has %d characters, more than %d", n, MaxReason)})
	}
	if !storable(r.Reason) {
		errs = append(errs, FieldError{"reason", "must not contain NUL characters"})
	}
	if len(errs) > 0 {
		return &ValidationError{Errors: errs}
	}
	return nil
}
