package main

import (
	"strings"
	"testing"
)

// Messages as govulncheck -format json writes them, cut to what report reads.
const (
	config         = `{"config":{"protocol_version":"v1.0.0","scanner_name":"govulncheck"}}`
	stdlibCalled   = `{"finding":{"osv":"GO-1","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Serve"},{"module":"example.com/m","package":"example.com/m/x","function":"F","position":{"filename":"x/x.go","line":7}}]}}`
	moduleCalled   = `{"finding":{"osv":"GO-2","fixed_version":"v0.39.0","trace":[{"module":"golang.org/x/image","version":"v0.30.0","package":"golang.org/x/image/tiff","function":"Decode"},{"module":"example.com/m","package":"example.com/m/y","function":"G","position":{"filename":"y/y.go","line":9}}]}}`
	moduleImported = `{"finding":{"osv":"GO-3","fixed_version":"v1.2.3","trace":[{"module":"example.com/dep","version":"v1.0.0","package":"example.com/dep/p"}]}}`
)

func TestReport_FailsOnCalledModuleVulnerabilitiesAndOnTheStandardLibraryOnlyWhenAskedTo(t *testing.T) {
	for _, tt := range []struct {
		name         string
		messages     []string
		failOnStdlib bool
		failed       bool
		mentions     []string
	}{
		{"nothing found", []string{config}, true, false, []string{"0 vulnerabilities"}},
		{"a called module vulnerability fails", []string{config, moduleCalled}, false, true, []string{"FAIL: GO-2 in golang.org/x/image@v0.30.0, fixed in v0.39.0, reached from y/y.go:9"}},
		{"the standard library fails by default", []string{config, stdlibCalled}, true, true, []string{"FAIL: GO-1 in stdlib@v1.26.8"}},
		{"the standard library only warns with -stdlib warn", []string{config, stdlibCalled}, false, false, []string{"warn (the toolchain's: upgrade Go): GO-1"}},
		{"imported but not called is not reached", []string{config, moduleImported}, true, false, []string{"0 vulnerabilities"}},
		{"one paragraph per vulnerability", []string{config, moduleCalled, moduleCalled}, true, true, []string{"1 vulnerabilities"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			failed, err := report(strings.NewReader(strings.Join(tt.messages, "\n")), &out, tt.failOnStdlib)
			if err != nil {
				t.Fatal(err)
			}
			if failed != tt.failed {
				t.Errorf("failed = %v, want %v; output:\n%s", failed, tt.failed, out.String())
			}
			for _, m := range tt.mentions {
				if !strings.Contains(out.String(), m) {
					t.Errorf("output lacks %q:\n%s", m, out.String())
				}
			}
		})
	}
}

func TestReport_RefusesInputThatIsNotGovulncheckJSON(t *testing.T) {
	for _, in := range []string{"", "Your code is affected by 1 vulnerability"} {
		if _, err := report(strings.NewReader(in), &strings.Builder{}, true); err == nil {
			t.Errorf("%q: no error; a text report or nothing must not pass as clean", in)
		}
	}
}
