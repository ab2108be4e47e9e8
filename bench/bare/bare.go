// Package bare is the baseline of the write-path benchmark
// (../writepath): the payment endpoint a new user writes first with chi
// and lib/pq, and nothing more.
//
// POST /v1/payments, with a JSON body {"amount":1000,"currency":"usd"} and
// an Idempotency-Key header:
//
//  1. INSERTs the payment (id pay_<random>, client, key, amount, currency,
//     status processing) in one autocommit statement. The table's unique
//     (client_id, idempotency_key) makes the same key again a conflict: the
//     handler then SELECTs the stored payment and answers it (201 if it
//     succeeded, 402 if it failed, 202 while processing), with
//     Idempotent-Replayed: true (payservice's header, which the benchmark
//     checks; a first version might not send it), and calls nothing;
//  2. calls the provider once: POST {provider}/v1/charges with
//     Idempotency-Key = the payment id and {"amount","currency","reference"};
//  3. UPDATEs the payment with the charge id and its status (succeeded on
//     201, failed on 402) in one autocommit statement, and answers with the
//     payment as JSON: 201 if it succeeded, 402 if it failed.
//
// GET /v1/payments/{id} reads one payment; GET /healthz answers 200.
//
// What it leaves out, compared with payservice, is most of what payservice
// is for:
//
//   - no lease and no fencing: two requests with one key cannot both insert,
//     but nothing stops a second request (or a second replica) from working
//     on a payment another is still working on, and nothing stops a slow one
//     from overwriting a newer outcome;
//   - no unknown-outcome handling: a provider timeout, 5xx or lost answer
//     is a 502 and the payment stays processing for good, its charge
//     perhaps made; a client retrying with the same key gets that stuck
//     payment back (202) and never a second attempt;
//   - no reconciler to settle such payments from the provider's records;
//   - no request fingerprint: the same key with a different amount replays
//     the first payment instead of being refused;
//   - no Redis fast path for replays and no stored response bytes: a replay
//     is a failed INSERT plus a SELECT, rendered afresh;
//   - no authentication (every caller is the one client "bench"), no
//     per-client rate limit, no bulkhead, circuit breaker, retries with
//     budget and backoff, or egress rate limit around the provider;
//   - no request deadline beyond the HTTP client's 10 s timeout, no
//     readiness gate, no graceful drain beyond http.Server.Shutdown;
//   - no problem+json errors (plain-text http.Error), no strict decoding
//     (unknown fields pass), no validation beyond amount > 0 and a
//     currency, no description or metadata;
//   - no request ids, access log, metrics or pprof;
//   - no migrations: New's caller creates the table with Schema.
//
// Two things a new user might also leave at their defaults are set here,
// because leaving them would measure a misconfiguration rather than a write
// path: the Postgres pool keeps as many idle connections as payservice's
// (20 open, 20 idle; database/sql keeps 2 idle by default, so 32
// concurrent requests would reconnect constantly), and the provider client
// keeps 64 idle connections (http.DefaultTransport keeps 2 per host).
package bare

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

// Client is the client id every payment is stored under: the bare
// handler has no authentication.
const Client = "bench"

// Schema creates the bare handler's table, its own (it is not payservice's
// payments table).
const Schema = `CREATE TABLE IF NOT EXISTS bare_payments (
    id                 text        PRIMARY KEY,
    client_id          text        NOT NULL,
    idempotency_key    text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    status             text        NOT NULL,
    provider_charge_id text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, idempotency_key)
)`

// ConfigurePool sets the pool sizes of payservice's defaults
// (DB_MAX_OPEN_CONNS=20, DB_MAX_IDLE_CONNS=20).
func ConfigurePool(db *sql.DB) {
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
}

// NewProviderClient returns the HTTP client the handler calls the
// provider with.
func NewProviderClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 64, 64
	return &http.Client{Timeout: 10 * time.Second, Transport: t}
}

// New returns the handler, storing payments in db (whose bare_payments
// table exists) and charging them at providerURL with client.
func New(db *sql.DB, providerURL string, client *http.Client) http.Handler {
	h := &handler{db: db, charges: strings.TrimSuffix(providerURL, "/") + "/v1/charges", client: client}
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	r.Post("/v1/payments", h.create)
	r.Get("/v1/payments/{id}", h.get)
	return r
}

type handler struct {
	db      *sql.DB
	charges string
	client  *http.Client
}

type payment struct {
	ID               string    `json:"id"`
	Amount           int64     `json:"amount"`
	Currency         string    `json:"currency"`
	Status           string    `json:"status"`
	ProviderChargeID *string   `json:"provider_charge_id"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

const columns = `id, amount, currency, status, provider_charge_id, created_at, updated_at`

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		http.Error(w, "Idempotency-Key header required", http.StatusBadRequest)
		return
	}
	var req struct {
		Amount   int64  `json:"amount"`
		Currency string `json:"currency"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Amount <= 0 || req.Currency == "" {
		http.Error(w, "want {\"amount\": a positive integer, \"currency\": a code}", http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	p := payment{ID: "pay_" + rand.Text(), Amount: req.Amount, Currency: req.Currency, Status: "processing"}

	// 1. The row first, so that a key names one payment.
	err := h.db.QueryRowContext(ctx, `
		INSERT INTO bare_payments (id, client_id, idempotency_key, amount, currency, status)
		VALUES ($1, $2, $3, $4, $5, 'processing')
		ON CONFLICT (client_id, idempotency_key) DO NOTHING
		RETURNING created_at, updated_at`,
		p.ID, Client, key, p.Amount, p.Currency).Scan(&p.CreatedAt, &p.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) { // the key was used before: answer what is stored
		stored, err := scan(h.db.QueryRowContext(ctx,
			`SELECT `+columns+` FROM bare_payments WHERE client_id = $1 AND idempotency_key = $2`, Client, key))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, statusOf(stored), stored)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}

	// 2. One call to the provider, with the payment id as its key.
	status, chargeID, err := h.charge(ctx, p)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway) // the payment stays processing
		return
	}

	// 3. The outcome.
	p.Status, p.ProviderChargeID = status, &chargeID
	if err := h.db.QueryRowContext(ctx, `
		UPDATE bare_payments SET status = $2, provider_charge_id = $3, updated_at = now()
		WHERE id = $1 RETURNING updated_at`, p.ID, status, chargeID).Scan(&p.UpdatedAt); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, statusOf(p), p)
}

// charge calls the provider once and returns the payment's status and the
// charge id.
func (h *handler) charge(ctx context.Context, p payment) (status, chargeID string, err error) {
	body, _ := json.Marshal(map[string]any{"amount": p.Amount, "currency": p.Currency, "reference": p.ID})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.charges, bytes.NewReader(body))
	if err != nil {
		return "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", p.ID)
	resp, err := h.client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	var charge struct {
		ID string `json:"id"`
	}
	decodeErr := json.NewDecoder(resp.Body).Decode(&charge)
	switch {
	case resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusPaymentRequired:
		return "", "", fmt.Errorf("provider answered %s", resp.Status)
	case decodeErr != nil:
		return "", "", fmt.Errorf("provider's answer: %w", decodeErr)
	case resp.StatusCode == http.StatusCreated:
		return "succeeded", charge.ID, nil
	default:
		return "failed", charge.ID, nil
	}
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	p, err := scan(h.db.QueryRowContext(r.Context(),
		`SELECT `+columns+` FROM bare_payments WHERE id = $1 AND client_id = $2`, chi.URLParam(r, "id"), Client))
	if errors.Is(err, sql.ErrNoRows) {
		http.Error(w, "no such payment", http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func scan(row *sql.Row) (payment, error) {
	var p payment
	err := row.Scan(&p.ID, &p.Amount, &p.Currency, &p.Status, &p.ProviderChargeID, &p.CreatedAt, &p.UpdatedAt)
	return p, err
}

// statusOf is the answer to a payment request: 201 charged, 402 declined,
// 202 still processing.
func statusOf(p payment) int {
	switch p.Status {
	case "succeeded":
		return http.StatusCreated
	case "failed":
		return http.StatusPaymentRequired
	}
	return http.StatusAccepted
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
