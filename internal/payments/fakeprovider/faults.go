package fakeprovider

import (
	"fmt"
	"net/http"
	"time"
)

// MaxLatency is the longest latency fault the provider accepts. A server
// running the provider needs a write timeout longer than this, or it would
// cut the answers the fake is deliberately delaying.
const MaxLatency = 60 * time.Second

// Faults are the failures the provider injects. The zero value injects none.
type Faults struct {
	// ErrorRate is the probability, in [0, 1], that a charge or refund
	// request is answered 503 without being carried out.
	ErrorRate float64 `json:"error_rate"`
	// LatencyMS delays every answer of the /v1/ endpoints by this many
	// milliseconds, after the charge or refund (if any) is recorded. At most
	// MaxLatency.
	LatencyMS int `json:"latency_ms"`
	// ChargeThenErrorRate is the probability, in [0, 1], that a charge or
	// refund request is carried out and then answered 500: the client cannot
	// tell whether it paid, or was paid back. A refund request's outcome,
	// refusals included, is recorded for its key before the draw.
	ChargeThenErrorRate float64 `json:"charge_then_error_rate"`
}

// Latency is LatencyMS as a duration.
func (f Faults) Latency() time.Duration {
	return time.Duration(f.LatencyMS) * time.Millisecond
}

// Validate reports the first field that is out of range, by its JSON name.
func (f Faults) Validate() error {
	if !validRate(f.ErrorRate) {
		return fmt.Errorf("error_rate must be within [0, 1], got %v", f.ErrorRate)
	}
	if f.LatencyMS < 0 || f.LatencyMS > int(MaxLatency.Milliseconds()) {
		return fmt.Errorf("latency_ms must be within [0, %d], got %d", MaxLatency.Milliseconds(), f.LatencyMS)
	}
	if !validRate(f.ChargeThenErrorRate) {
		return fmt.Errorf("charge_then_error_rate must be within [0, 1], got %v", f.ChargeThenErrorRate)
	}
	return nil
}

// validRate is written so that NaN, which compares false to everything, is
// not valid.
func validRate(r float64) bool { return r >= 0 && r <= 1 }

// errorRateAnswer is the error_rate fault's answer: nothing was done, so the
// client may retry.
func errorRateAnswer() answer {
	a := errorAnswer(http.StatusServiceUnavailable, "unavailable", "injected fault: error_rate")
	a.header = http.Header{"Retry-After": {"1"}}
	return a
}

// chargeThenErrorAnswer is the charge_then_error_rate fault's answer, given
// after the request was carried out.
func chargeThenErrorAnswer() answer {
	return errorAnswer(http.StatusInternalServerError, "internal", "injected fault: charge_then_error_rate")
}

// Faults returns the faults in force.
func (p *Provider) Faults() Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// SetFaults replaces the faults in force, for requests decided from now on.
// It rejects faults that fail Validate and keeps the current ones.
func (p *Provider) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = f
	return nil
}

// ResetFaults switches every fault off.
func (p *Provider) ResetFaults() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = Faults{}
}

func (p *Provider) getFaults(*http.Request) answer {
	return answer{status: http.StatusOK, body: p.Faults()}
}

// putFaults replaces all faults: a field left out is switched off, so the
// body always states the whole fault configuration.
func (p *Provider) putFaults(r *http.Request) answer {
	var f Faults
	if err := decodeJSON(r.Body, &f); err != nil {
		return decodeErrorAnswer(err)
	}
	if err := p.SetFaults(f); err != nil {
		return errorAnswer(http.StatusBadRequest, "invalid_request", err.Error())
	}
	return answer{status: http.StatusOK, body: f}
}

func (p *Provider) deleteFaults(*http.Request) answer {
	p.ResetFaults()
	return answer{status: http.StatusOK, body: Faults{}}
}
