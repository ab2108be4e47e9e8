// Command vulnreport reads govulncheck's JSON stream (-format json) on
// stdin, prints one paragraph per vulnerability the code calls, and fails
// when one is in a module the repository can upgrade.
//
//	govulncheck -format json ./... | go run ./internal/tools/vulnreport [-stdlib warn]
//
// Vulnerabilities in the standard library are fixed by the Go toolchain
// that builds the binary, not by go.mod: where that toolchain is the
// machine's and cannot move (an offline CI machine), -stdlib warn reports
// them without failing. The image is built by the newest patch release of
// GO_IMAGE; the GitHub workflow keeps the default, -stdlib fail.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
)

// finding is the part of govulncheck's finding message used here: the
// trace starts at the vulnerable symbol and ends in this module's code.
type finding struct {
	OSV          string `json:"osv"`
	FixedVersion string `json:"fixed_version"`
	Trace        []struct {
		Module   string `json:"module"`
		Version  string `json:"version"`
		Package  string `json:"package"`
		Function string `json:"function"`
		Receiver string `json:"receiver"`
		Position *struct {
			Filename string `json:"filename"`
			Line     int    `json:"line"`
		} `json:"position"`
	} `json:"trace"`
}

func main() {
	stdlib := flag.String("stdlib", "fail", "fail or warn on vulnerabilities in the standard library")
	flag.Parse()
	if *stdlib != "fail" && *stdlib != "warn" {
		fmt.Fprintf(os.Stderr, "vulnreport: -stdlib %q: want fail or warn\n", *stdlib)
		os.Exit(2)
	}
	failed, err := report(os.Stdin, os.Stdout, *stdlib == "fail")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulnreport:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// report writes the called vulnerabilities and says whether any of them
// fails the check.
func report(in io.Reader, out io.Writer, failOnStdlib bool) (failed bool, err error) {
	dec := json.NewDecoder(in)
	var seen []string
	messages := 0
	for {
		var m struct {
			Finding *finding `json:"finding"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return false, fmt.Errorf("reading govulncheck's JSON: %w", err)
		}
		messages++
		f := m.Finding
		// A trace whose first frame has no function is a module or
		// package the code imports but does not call into: not reached.
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" || slices.Contains(seen, f.OSV) {
			continue
		}
		seen = append(seen, f.OSV)
		top, caller := f.Trace[0], f.Trace[len(f.Trace)-1]
		where := ""
		if caller.Position != nil {
			where = fmt.Sprintf(", reached from %s:%d", caller.Position.Filename, caller.Position.Line)
		}
		verdict := "FAIL"
		if top.Module == "stdlib" && !failOnStdlib {
			verdict = "warn (the toolchain's: upgrade Go)"
		} else {
			failed = true
		}
		fmt.Fprintf(out, "%s: %s in %s@%s, fixed in %s%s\n    https://pkg.go.dev/vuln/%s\n",
			verdict, f.OSV, top.Module, top.Version, f.FixedVersion, where, f.OSV)
	}
	if messages == 0 {
		return false, errors.New("no messages on stdin: did govulncheck run with -format json?")
	}
	fmt.Fprintf(out, "%d vulnerabilities reached from this module's code\n", len(seen))
	return failed, nil
}
