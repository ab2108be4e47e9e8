package testenv

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// Logs collects the JSON lines a logger writes, so that a test can find
// one, or wait for it (the listening addresses, say). Safe for concurrent
// use; the zero value is ready.
type Logs struct {
	mu    sync.Mutex
	buf   bytes.Buffer // an incomplete line, until its end is written
	lines []map[string]any
	other []string // complete lines that are not JSON (a panic's trace)
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadBytes('\n')
		if err != nil { // incomplete line: keep it for the next write
			l.buf.Write(line)
			return len(p), nil
		}
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			l.lines = append(l.lines, m)
		} else {
			l.other = append(l.other, string(line))
		}
	}
}

// Lines returns every line match is true for.
func (l *Logs) Lines(match func(map[string]any) bool) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if match(m) {
			out = append(out, m)
		}
	}
	return out
}

// Find returns the first line match is true for.
func (l *Logs) Find(match func(map[string]any) bool) (map[string]any, bool) {
	if found := l.Lines(match); len(found) > 0 {
		return found[0], true
	}
	return nil, false
}

// WaitFor returns the first line match is true for, waiting up to 30 s
// for it to be written; then it fails the test, naming what.
func (l *Logs) WaitFor(t testing.TB, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m, ok := l.Find(match); ok {
			return m
		}
	}
	t.Fatalf("no log line %s within 30s", what)
	return nil
}

// String returns the JSON lines so far, re-encoded, then those that were
// not JSON and any incomplete one: for a failing test's log.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, m := range l.lines {
		line, _ := json.Marshal(m)
		b.Write(line)
		b.WriteByte('\n')
	}
	for _, line := range l.other {
		b.WriteString(line)
	}
	b.Write(l.buf.Bytes())
	return b.String()
}
