package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestREADME_ConfigurationTableMatchesServerHelp keeps the README true:
// every variable `server -h` lists is in its configuration table, with the
// same default, and the table lists nothing else.
func TestREADME_ConfigurationTableMatchesServerHelp(t *testing.T) {
	var help bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, func(string) string { return "" }, &help, &help); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{} // variable → default, as -h shows them
	inTable := false
	for sc := bufio.NewScanner(&help); sc.Scan(); {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) > 0 && f[0] == "VARIABLE":
			inTable = true
		case inTable && len(f) >= 2:
			want[f[0]] = f[1]
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for line := range strings.Lines(string(readme)) {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if strings.ToUpper(name) != name || !strings.Contains(name, "_") {
			continue // another table's row
		}
		got[name] = strings.Trim(strings.TrimSpace(cells[2]), "`")
	}
	for name, def := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("README's configuration table lacks %s", name)
		} else if g != def {
			t.Errorf("README says %s defaults to %q; server -h says %q", name, g, def)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("README's configuration table lists %s, which server -h does not", name)
		}
	}
	if len(want) < 40 {
		t.Errorf("parsed only %d variables from server -h", len(want))
	}
}
