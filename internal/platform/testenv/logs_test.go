package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// TestLogs_KeepsLinesSplitAcrossWrites checks that a line written in
// pieces is parsed once whole, that a line not JSON is kept for String
// only, and that Find and Lines filter.
func TestLogs_KeepsLinesSplitAcrossWrites(t *testing.T) {
	var l Logs
	for _, p := range []string{`{"msg":"listen`, `ing","addr":"127.0.0.1:1"}` + "\n" + `{"msg":"ready"}` + "\nnot json\n", `{"msg":"rea`} {
		fmt.Fprint(&l, p)
	}
	if got := len(l.Lines(func(map[string]any) bool { return true })); got != 2 {
		t.Errorf("%d whole JSON lines, want 2", got)
	}
	m, ok := l.Find(func(m map[string]any) bool { return m["msg"] == "listening" })
	if !ok || m["addr"] != "127.0.0.1:1" {
		t.Errorf("Find(listening) = %v, %v", m, ok)
	}
	if _, ok := l.Find(func(m map[string]any) bool { return m["msg"] == "rea" }); ok {
		t.Error("an incomplete line was parsed")
	}
	if s := l.String(); !strings.Contains(s, `{"msg":"rea`) || !strings.Contains(s, `"msg":"ready"`) || !strings.Contains(s, "not json\n") {
		t.Errorf("String() = %q: want every line and the incomplete one", s)
	}
	fmt.Fprint(&l, "dy\"}\n")
	if got := l.WaitFor(t, "the completed line", func(m map[string]any) bool { return m["msg"] == "ready" }); got == nil {
		t.Error("WaitFor found nothing")
	}
	if got := len(l.Lines(func(m map[string]any) bool { return m["msg"] == "ready" })); got != 2 {
		t.Errorf("%d ready lines once the second is complete, want 2", got)
	}
}
