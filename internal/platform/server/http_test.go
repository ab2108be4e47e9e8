package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// exchange sends raw bytes to a server made by NewHTTP and returns the
// status line and headers of its answer, and whether the handler ran.
func exchange(t *testing.T, raw string) (*http.Response, bool) {
	t.Helper()
	var handled atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTP(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { handled.Store(true) }),
		DefaultHTTPConfig(), context.Background(), slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	// Written concurrently: the server may answer and close before it has
	// read everything.
	go func() { _, _ = io.WriteString(conn, raw) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no HTTP answer: %v", err)
	}
	resp.Body.Close()
	return resp, handled.Load()
}

// What net/http answers by itself, before a handler (and so before any
// request id or problem+json), is pinned here so that the README's account
// of it stays true.
func TestNewHTTP_RefusesOversizedHeadersAndMalformedRequestsBeforeAnyHandler(t *testing.T) {
	header := func(n int) string {
		return fmt.Sprintf("GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", n))
	}
	for _, tt := range []struct {
		name    string
		raw     string
		status  int
		handled bool
	}{
		{"headers within MaxHeaderBytes", header(MaxHeaderBytes - 100), http.StatusOK, true},
		{"headers over MaxHeaderBytes and net/http's slack", header(MaxHeaderBytes + 4096), http.StatusRequestHeaderFieldsTooLarge, false},
		{"a malformed request line", "NOT A REQUEST\r\n\r\n", http.StatusBadRequest, false},
		{"a malformed header", "GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", http.StatusBadRequest, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, handled := exchange(t, tt.raw)
			if resp.StatusCode != tt.status || handled != tt.handled {
				t.Errorf("status %d, handler ran: %v; want %d, %v", resp.StatusCode, handled, tt.status, tt.handled)
			}
			if !tt.handled && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Errorf("Content-Type %q: net/http's own answers are text/plain, as the README says", resp.Header.Get("Content-Type"))
			}
		})
	}
}
