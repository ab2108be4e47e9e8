package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// refused is the error a dial to a closed port gives, address included.
var refused = &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5432}, Err: errors.New("connect: connection refused")}

func probe(err error) func(context.Context) error {
	return func(context.Context) error { return err }
}

func TestHealthReady_ReportsEveryCheck(t *testing.T) {
	tests := []struct {
		name       string
		migrated   bool
		shutdown   bool
		postgres   error
		redis      error
		wantStatus int
		wantChecks map[string]string
	}{
		{"all well", true, false, nil, nil, 200,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "ok"}},
		{"migrations pending", false, false, nil, nil, 503,
			map[string]string{"migrations": "pending", "postgres": "ok", "redis": "ok"}},
		{"postgres down", true, false, refused, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: unreachable", "redis": "ok"}},
		{"redis down: degraded, still ready", true, false, nil, refused, 200,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "degraded: unreachable"}},
		{"postgres slow", true, false, context.DeadlineExceeded, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: timeout", "redis": "ok"}},
		{"postgres failing otherwise", true, false, errors.New("pq: the database system is starting up"), nil, 503,
			map[string]string{"migrations": "ok", "postgres": "unavailable: failing", "redis": "ok"}},
		{"shutting down", true, true, nil, nil, 503,
			map[string]string{"migrations": "ok", "postgres": "ok", "redis": "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHealth(time.Second, slog.New(slog.DiscardHandler),
				Check{Name: "postgres", Probe: probe(tt.postgres)},
				Check{Name: "redis", Optional: true, Probe: probe(tt.redis)})
			if tt.migrated {
				h.SetMigrated()
			}
			if tt.shutdown {
				h.SetShuttingDown()
			}
			rec := httptest.NewRecorder()
			h.ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))

			var body healthBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			wantStatus := map[int]string{200: "ok", 503: "unavailable"}[tt.wantStatus]
			if rec.Code != tt.wantStatus || body.Status != wantStatus {
				t.Errorf("%d %q, want %d %q", rec.Code, body.Status, tt.wantStatus, wantStatus)
			}
			for name, want := range tt.wantChecks {
				if body.Checks[name] != want {
					t.Errorf("checks[%s] = %q, want %q", name, body.Checks[name], want)
				}
			}
			if tt.shutdown && body.Reason != "shutting down" {
				t.Errorf("reason %q, want shutting down", body.Reason)
			}
		})
	}
}

func TestHealthReady_KeepsErrorDetailsInTheLogOncePerChange(t *testing.T) {
	var logs bytes.Buffer
	var pgErr error = refused
	h := NewHealth(time.Second, slog.New(slog.NewJSONHandler(&logs, nil)),
		Check{Name: "postgres", Probe: func(context.Context) error { return pgErr }})
	h.SetMigrated()
	ready := func() string {
		rec := httptest.NewRecorder()
		h.ready(rec, httptest.NewRequest(http.MethodGet, "/health/ready", nil))
		return rec.Body.String()
	}

	for range 3 {
		if body := ready(); strings.Contains(body, "10.1.2.3") {
			t.Fatalf("the public body shows the dependency's address: %s", body)
		}
	}
	if n := strings.Count(logs.String(), "readiness check failing"); n != 1 || !strings.Contains(logs.String(), "10.1.2.3:5432") {
		t.Errorf("want one log line with the error's details for three failing probes, got %d:\n%s", n, logs.String())
	}
	pgErr = nil
	ready()
	ready()
	if n := strings.Count(logs.String(), "readiness check passes again"); n != 1 {
		t.Errorf("want one recovery line, got %d:\n%s", n, logs.String())
	}
}
