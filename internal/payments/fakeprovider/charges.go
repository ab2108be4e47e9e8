package fakeprovider

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Charge statuses and the decline code, as they appear in the JSON.
// StatusSucceeded is also the status of every refund.
const (
	StatusSucceeded  = "succeeded"
	StatusDeclined   = "declined"
	CodeCardDeclined = "card_declined"
)

// Charge is one entry of the ledger. It is a plain value: the copies the
// provider hands out are snapshots that later requests do not change.
type Charge struct {
	ID             string    `json:"id"`
	Status         string    `json:"status"` // StatusSucceeded or StatusDeclined
	Amount         int64     `json:"amount"` // minor units
	Currency       string    `json:"currency"`
	Reference      string    `json:"reference"`
	Code           string    `json:"code,omitempty"` // CodeCardDeclined on declines
	IdempotencyKey string    `json:"idempotency_key"`
	CreatedAt      time.Time `json:"created_at"` // UTC; RFC 3339 with nanoseconds in JSON
}

// Charges returns a snapshot of the whole ledger, oldest first. It is never
// nil, so it encodes as [] when the ledger is empty.
func (p *Provider) Charges() []Charge {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(make([]Charge, 0, len(p.charges)), p.charges...)
}

// ChargesByKey returns the charge recorded under the idempotency key, as a
// slice of zero or one charges, the shape of the reconciliation endpoint.
func (p *Provider) ChargesByKey(key string) []Charge {
	p.mu.Lock()
	defer p.mu.Unlock()
	found := make([]Charge, 0, 1)
	if i, ok := p.chargesByKey[key]; ok {
		found = append(found, p.charges[i])
	}
	return found
}

type chargeRequest struct {
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
	Reference string `json:"reference"`
}

func (c chargeRequest) validate() error {
	if c.Amount <= 0 {
		return fmt.Errorf("amount must be a positive number of minor units, got %d", c.Amount)
	}
	if c.Currency == "" {
		return errors.New("currency is required")
	}
	return nil
}

// declined says which amounts the fake declines: those ending in 402, so a
// test picks the outcome with the amount, as with real providers' test cards.
func declined(amount int64) bool { return amount%1000 == 402 }

func (p *Provider) createCharge(r *http.Request) answer {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return errorAnswer(http.StatusBadRequest, "invalid_request", "the Idempotency-Key header is required")
	}
	var body struct {
		chargeRequest
		expiry
	}
	if err := decodeJSON(r.Body, &body); err != nil {
		return decodeErrorAnswer(err)
	}
	if err := body.validate(); err != nil {
		return errorAnswer(http.StatusBadRequest, "invalid_request", err.Error())
	}
	return p.charge(key, body.chargeRequest, body.expiry)
}

// charge is the whole ledger decision for one request, made under the lock:
// that is what makes concurrent requests with one key produce one charge.
// Faults apply to replays too, since a real provider can fail on any request,
// but a replay never changes the ledger. A request past its expiry charges
// nothing; a replay of a charge made in time still answers it.
func (p *Provider) charge(key string, req chargeRequest, exp expiry) answer {
	p.mu.Lock()
	defer p.mu.Unlock()

	i, seen := p.chargesByKey[key]
	if seen {
		// The reference too: a client reusing one key for two payments
		// must hear about it, not get the other payment's charge.
		if ch := p.charges[i]; ch.Amount != req.Amount || ch.Currency != req.Currency || ch.Reference != req.Reference {
			return errorAnswer(http.StatusUnprocessableEntity, "idempotency_key_reused", fmt.Sprintf(
				"idempotency key %q was used for a charge of %d %s for %q; this request is for %d %s for %q",
				key, ch.Amount, ch.Currency, ch.Reference, req.Amount, req.Currency, req.Reference))
		}
	}
	if !seen && exp.passed(p.now()) {
		return expiredAnswer(exp)
	}
	if p.draw(p.faults.ErrorRate) {
		return errorRateAnswer()
	}
	if !seen {
		i = p.record(key, req)
	}
	if p.draw(p.faults.ChargeThenErrorRate) {
		return chargeThenErrorAnswer()
	}
	ch := p.charges[i]
	if ch.Status == StatusDeclined {
		return answer{status: http.StatusPaymentRequired, body: ch}
	}
	return answer{status: http.StatusCreated, body: ch}
}

// record adds a charge to the ledger and returns its index. The caller holds
// p.mu.
func (p *Provider) record(key string, req chargeRequest) int {
	ch := Charge{
		ID:             p.newChargeID(),
		Status:         StatusSucceeded,
		Amount:         req.Amount,
		Currency:       req.Currency,
		Reference:      req.Reference,
		IdempotencyKey: key,
		CreatedAt:      p.now().UTC(),
	}
	if declined(req.Amount) {
		ch.Status, ch.Code = StatusDeclined, CodeCardDeclined
	}
	i := len(p.charges)
	p.charges = append(p.charges, ch)
	p.chargesByKey[key] = i
	p.chargesByID[ch.ID] = i
	return i
}

func (p *Provider) listCharges(r *http.Request) answer {
	q := r.URL.Query()
	if !q.Has("idempotency_key") {
		all := p.Charges()
		return answer{status: http.StatusOK, body: struct {
			Data  []Charge `json:"data"`
			Count int      `json:"count"`
		}{all, len(all)}}
	}
	key := q.Get("idempotency_key")
	if key == "" {
		// No charge can have an empty key, so this is a bug in the caller,
		// not a charge that does not exist.
		return errorAnswer(http.StatusBadRequest, "invalid_request", "the idempotency_key parameter must not be empty")
	}
	return answer{status: http.StatusOK, body: struct {
		Data []Charge `json:"data"`
	}{p.ChargesByKey(key)}}
}
