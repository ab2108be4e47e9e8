package platform

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/resiliencekit/payservice"

// platformFiles returns every Go file under internal/platform, tests
// included: a test that needs the domain would not lift either.
func platformFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 20 {
		t.Fatalf("found only %d Go files under internal/platform: is the test running from its own directory?", len(files))
	}
	return files
}

func TestPlatform_ImportsOnlyItselfFromThisModule(t *testing.T) {
	fset := token.NewFileSet()
	for _, path := range platformFiles(t) {
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if allowedImport(p) {
				continue
			}
			t.Errorf("%s imports %s: the platform may import only itself from %s", fset.Position(imp.Pos()), p, module)
		}
	}
}

func allowedImport(path string) bool {
	return path != module && !strings.HasPrefix(path, module+"/") ||
		path == module+"/internal/platform" || strings.HasPrefix(path, module+"/internal/platform/")
}

func TestAllowedImport(t *testing.T) {
	for path, want := range map[string]bool{
		"net/http":                        true,
		"github.com/go-chi/chi/v5":        true,
		module + "/internal/platform/web": true,
		module + "/internal/payments":     false,
		module + "/internal/payments/x":   false,
		module + "/internal/app":          false,
		module + "/cmd/fakeprovider":      false,
		module:                            false,
		module + "/internal/platformer":   false,
	} {
		if got := allowedImport(path); got != want {
			t.Errorf("allowedImport(%q) = %v, want %v", path, got, want)
		}
	}
}

// domainWords is the example domain's vocabulary. It is matched anywhere,
// inside identifiers too (NewPaymentStore), case-insensitively.
var domainWords = regexp.MustCompile(`(?i)payment|refund|charg(e|ed|es|ing)|\bpay_`)

func TestPlatform_DoesNotSpeakTheDomain(t *testing.T) {
	for _, path := range platformFiles(t) {
		if path == "layout_test.go" || path == "doc.go" {
			continue // the rule has to name what it forbids
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if w := domainWords.FindString(line); w != "" {
				t.Errorf("%s:%d: %q belongs to the domain: %s", path, i+1, w, strings.TrimSpace(line))
			}
		}
	}
}

func TestDomainWords(t *testing.T) {
	for s, want := range map[string]bool{
		"func NewPaymentStore()":   true,
		"// refunds of two orders": true,
		"ChargeFn":                 true,
		"discharged":               true,
		`"pay_0123"`:               true,
		"github.com/resiliencekit/payservice/internal/platform": false,
		"// a declined order":  false,
		"type Payer interface": false,
	} {
		if got := domainWords.MatchString(s); got != want {
			t.Errorf("domainWords.MatchString(%q) = %v, want %v", s, got, want)
		}
	}
}
