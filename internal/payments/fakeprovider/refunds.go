package fakeprovider

import (
	"errors"
	"fmt"
	"net/http"
)

// Refund is one entry of the refund ledger: money given back from a
// succeeded charge. Like Charge, it is a plain value: the copies the provider
// hands out are snapshots that later requests do not change.
type Refund struct {
	ID             string `json:"id"`
	Status         string `json:"status"` // StatusSucceeded: a refused request makes no refund
	Charge         string `json:"charge"` // the refunded charge's ID
	Amount         int64  `json:"amount"` // minor units of the charge's currency
	Reference      string `json:"reference"`
	IdempotencyKey string `json:"idempotency_key"`
}

// refundOutcome is what the first refund request with a key came to: a
// refund, or the refusal of one. Refusals are kept too, so a retry hears
// what the first request heard — as a declined charge is replayed — whatever
// the ledger holds by then.
type refundOutcome struct {
	req     refundRequest // to refuse the key for any other request
	refund  int           // index into refunds, or -1 if refused
	refusal answer        // when refund is -1
}

// Refunds returns a snapshot of the whole refund ledger, oldest first. It is
// never nil, so it encodes as [] when there are no refunds.
func (p *Provider) Refunds() []Refund {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(make([]Refund, 0, len(p.refunds)), p.refunds...)
}

// RefundsByKey returns the refund made with the idempotency key, as a slice
// of zero or one refunds, the shape of the reconciliation endpoint. A key
// whose request was refused made no refund, so it finds none.
func (p *Provider) RefundsByKey(key string) []Refund {
	p.mu.Lock()
	defer p.mu.Unlock()
	found := make([]Refund, 0, 1)
	if out, ok := p.refundsByKey[key]; ok && out.refund >= 0 {
		found = append(found, p.refunds[out.refund])
	}
	return found
}

// refundRequest is comparable, so that a replay can be told from a key
// reused for another request with ==.
type refundRequest struct {
	Charge    string `json:"charge"`
	Amount    int64  `json:"amount"`
	Reference string `json:"reference"`
}

func (r refundRequest) validate() error {
	if r.Amount <= 0 {
		return fmt.Errorf("amount must be a positive number of minor units, got %d", r.Amount)
	}
	if r.Charge == "" {
		return errors.New("charge is required")
	}
	return nil
}

func (p *Provider) createRefund(r *http.Request) answer {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return errorAnswer(http.StatusBadRequest, "invalid_request", "the Idempotency-Key header is required")
	}
	var body struct {
		refundRequest
		expiry
	}
	if err := decodeJSON(r.Body, &body); err != nil {
		return decodeErrorAnswer(err)
	}
	if err := body.validate(); err != nil {
		return errorAnswer(http.StatusBadRequest, "invalid_request", err.Error())
	}
	return p.refund(key, body.refundRequest, body.expiry)
}

// refund is the whole decision for one refund request, made under the lock
// and in the order charge makes its own: that is what makes concurrent
// requests with one key produce one refund, and concurrent refunds of one
// charge never add up to more than it. Faults apply to replays too, but a
// replay never changes the ledger. A request past its expiry refunds
// nothing, and is not recorded for its key: a later request with the key
// may still be carried out.
func (p *Provider) refund(key string, req refundRequest, exp expiry) answer {
	p.mu.Lock()
	defer p.mu.Unlock()

	out, seen := p.refundsByKey[key]
	if seen && out.req != req {
		was := out.req
		return errorAnswer(http.StatusUnprocessableEntity, "idempotency_key_reused", fmt.Sprintf(
			"idempotency key %q was used for a refund of %d of charge %q for %q; this request is for %d of charge %q for %q",
			key, was.Amount, was.Charge, was.Reference, req.Amount, req.Charge, req.Reference))
	}
	if !seen && exp.passed(p.now()) {
		return expiredAnswer(exp)
	}
	if p.draw(p.faults.ErrorRate) {
		return errorRateAnswer()
	}
	if !seen {
		out = p.recordRefund(key, req)
		p.refundsByKey[key] = out
	}
	if p.draw(p.faults.ChargeThenErrorRate) {
		return chargeThenErrorAnswer()
	}
	if out.refund < 0 {
		return out.refusal
	}
	return answer{status: http.StatusCreated, body: p.refunds[out.refund]}
}

// recordRefund refunds req if its charge can give that much back, and
// returns the outcome: the refund, now in the ledger, or the refusal. The
// caller holds p.mu.
func (p *Provider) recordRefund(key string, req refundRequest) refundOutcome {
	refuse := func(status int, code, message string) refundOutcome {
		return refundOutcome{req: req, refund: -1, refusal: errorAnswer(status, code, message)}
	}
	i, ok := p.chargesByID[req.Charge]
	if !ok {
		return refuse(http.StatusNotFound, "no_such_charge", fmt.Sprintf("no charge %q", req.Charge))
	}
	ch := p.charges[i]
	if ch.Status != StatusSucceeded {
		return refuse(http.StatusUnprocessableEntity, "charge_not_refundable", fmt.Sprintf(
			"charge %q is %s; only a succeeded charge can be refunded", ch.ID, ch.Status))
	}
	refunded := p.refunded[ch.ID]
	if left := ch.Amount - refunded; req.Amount > left {
		return refuse(http.StatusUnprocessableEntity, "amount_too_large", fmt.Sprintf(
			"refund of %d is more than the %d left to refund of charge %q (charged %d, refunded %d)",
			req.Amount, left, ch.ID, ch.Amount, refunded))
	}
	p.refunds = append(p.refunds, Refund{
		ID:             p.newRefundID(),
		Status:         StatusSucceeded,
		Charge:         ch.ID,
		Amount:         req.Amount,
		Reference:      req.Reference,
		IdempotencyKey: key,
	})
	p.refunded[ch.ID] = refunded + req.Amount
	return refundOutcome{req: req, refund: len(p.refunds) - 1}
}

func (p *Provider) listRefunds(r *http.Request) answer {
	q := r.URL.Query()
	if !q.Has("idempotency_key") {
		all := p.Refunds()
		return answer{status: http.StatusOK, body: struct {
			Data  []Refund `json:"data"`
			Count int      `json:"count"`
		}{all, len(all)}}
	}
	key := q.Get("idempotency_key")
	if key == "" {
		// No refund can have an empty key, so this is a bug in the caller,
		// not a refund that does not exist.
		return errorAnswer(http.StatusBadRequest, "invalid_request", "the idempotency_key parameter must not be empty")
	}
	return answer{status: http.StatusOK, body: struct {
		Data []Refund `json:"data"`
	}{p.RefundsByKey(key)}}
}
