package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRun_ServesChargesUntilTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := newLogRecorder()
	env := map[string]string{"ADDR": "127.0.0.1:0"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, getenv(env), logs, &bytes.Buffer{}) }()

	listening := logs.waitFor(t, func(r logRecord) bool { return r["msg"] == "listening" })
	url := "http://" + listening["addr"].(string) + "/v1/charges"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"amount":1000,"currency":"usd","reference":"pay_1"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", "k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("POST %s: status = %d, want 201", url, resp.StatusCode)
	}
	logs.waitFor(t, func(r logRecord) bool {
		return r["msg"] == "request" && r["method"] == "POST" && r["path"] == "/v1/charges" &&
			r["status"] == float64(201) && r["duration"] != nil
	})
	healthEnv := getenv(map[string]string{"ADDR": listening["addr"].(string)})
	if err := run(ctx, []string{"healthcheck"}, healthEnv, io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of a running provider: %v", err)
	}

	cancel()

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v, want nil after a graceful shutdown", err)
		}
	case <-time.After(time.Second):
		t.Fatal("run still running a second after its context ended")
	}
	if err := run(context.Background(), []string{"healthcheck"}, healthEnv, io.Discard, io.Discard); err == nil {
		t.Error("healthcheck of a stopped provider succeeded")
	}
}

func TestRun_HelpListsTheEnvironmentAndExitsCleanly(t *testing.T) {
	var stdout, stderr bytes.Buffer

	err := run(t.Context(), []string{"-h"}, getenv(nil), &stdout, &stderr)

	if err != nil {
		t.Errorf("run -h = %v, want nil", err)
	}
	for _, want := range []string{"ADDR", `":8081"`, "LOG_FORMAT", `"json"`} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("usage does not mention %s:\n%s", want, stdout.String())
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr = %q, want nothing", stderr.String())
	}
}

func TestRun_FailsFastOnBadConfiguration(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantInErr string
	}{
		{"unknown flag", []string{"-port=8081"}, nil, "-port"},
		{"positional argument", []string{"serve"}, nil, "serve"},
		{"unknown log format", nil, map[string]string{"ADDR": "127.0.0.1:0", "LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"unusable address", nil, map[string]string{"ADDR": "127.0.0.1:99999"}, "ADDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer

			err := run(t.Context(), tt.args, getenv(tt.env), &stdout, &stderr)

			if err == nil || !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("run = %v, want an error naming %q", err, tt.wantInErr)
			}
		})
	}
}

func getenv(env map[string]string) func(string) string {
	return func(name string) string { return env[name] }
}

type logRecord map[string]any

// logRecorder is the stdout of run: it keeps the JSON log records written so
// far. slog writes each record with one Write call, so a Write is a record.
type logRecorder struct {
	mu      sync.Mutex
	records []logRecord
	written chan struct{} // signalled after each record, never blocking
}

func newLogRecorder() *logRecorder {
	return &logRecorder{written: make(chan struct{}, 1)}
}

func (l *logRecorder) Write(b []byte) (int, error) {
	var r logRecord
	if err := json.Unmarshal(b, &r); err != nil {
		r = logRecord{"unparsed": string(b)}
	}
	l.mu.Lock()
	l.records = append(l.records, r)
	l.mu.Unlock()
	select {
	case l.written <- struct{}{}:
	default:
	}
	return len(b), nil
}

// waitFor returns the first record that matches, waiting up to 5 seconds
// for it to be written.
func (l *logRecorder) waitFor(t *testing.T, match func(logRecord) bool) logRecord {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		l.mu.Lock()
		for _, r := range l.records {
			if match(r) {
				l.mu.Unlock()
				return r
			}
		}
		seen := append([]logRecord(nil), l.records...)
		l.mu.Unlock()
		select {
		case <-l.written:
		case <-timeout:
			t.Fatalf("no matching log record in 5s; logged: %v", seen)
		}
	}
}
