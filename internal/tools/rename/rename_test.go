package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckName_AcceptsOnlyAnameValidEverywhereTheTemplatesNameGoes(t *testing.T) {
	for _, name := range []string{"ledger", "a", "orders2", "abcdefghijklmnopqr", "payservice"} {
		if err := checkName(name); err != nil {
			t.Errorf("checkName(%q) = %v, want nil", name, err)
		}
	}
	for _, tc := range []struct {
		name string
		want []string // in the error
	}{
		{"", []string{"NAME is required", "make rename NAME="}},
		{"Ledger", []string{`NAME="Ledger"`, "lowercase"}},
		{"order-api", []string{`NAME="order-api"`, "metric prefix"}},
		{"order_api", []string{`NAME="order_api"`, "DNS label"}},
		{"9lives", []string{`NAME="9lives"`, "starting with a letter"}},
		{"led.ger", []string{`NAME="led.ger"`}},
		{"lédger", []string{`NAME="lédger"`}},
		{"abcdefghijklmnopqrs", []string{`NAME="abcdefghijklmnopqrs"`, "19 characters", "ABCDEFGHIJKLMNOPQRS-K8S-GUARD"}},
		{"postgres", []string{`NAME="postgres"`, "taken"}},
		{"redis", []string{`NAME="redis"`, "taken"}},
		{"fakeprovider", []string{`NAME="fakeprovider"`, "taken"}},
	} {
		err := checkName(tc.name)
		if err == nil {
			t.Errorf("checkName(%q) = nil, want an error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("checkName(%q) = %q, want it to say %q", tc.name, err, w)
			}
		}
	}
}

func TestReplace_RenamesEachSpellingAndTheModulePathInOnePass(t *testing.T) {
	r := newRenamer("ledger", "example.com/acme/ledger", templateModule)
	for _, tc := range []struct {
		in, want       string
		names, modules int
	}{
		{"# payservice", "# ledger", 1, 0},
		{"payservice_http_requests_total{code=\"201\"}", "ledger_http_requests_total{code=\"201\"}", 1, 0},
		{"PAYSERVICE-K8S-GUARD", "LEDGER-K8S-GUARD", 1, 0},
		{"Payservice and PayService", "Ledger and Ledger", 2, 0},
		{"payService", "ledger", 1, 0},
		{"image: payservice:dev # payservice's", "image: ledger:dev # ledger's", 2, 0},
		{"postgres://payservice:payservice@db:5432/payservice", "postgres://ledger:ledger@db:5432/ledger", 3, 0},
		{"https://payservice.example/problems/", "https://ledger.example/problems/", 1, 0},
		{`"github.com/resiliencekit/payservice/internal/app"`, `"example.com/acme/ledger/internal/app"`, 0, 1},
		{"module github.com/resiliencekit/payservice\n", "module example.com/acme/ledger\n", 0, 1},
		{"replace github.com/resiliencekit/payservice => ../", "replace example.com/acme/ledger => ../", 0, 1},
		{"https://github.com/resiliencekit/payservice.git", "https://example.com/acme/ledger.git", 0, 1},
		// Not the module path: another one that merely starts or ends alike.
		{"github.com/resiliencekit/payservice2", "github.com/resiliencekit/ledger2", 1, 0},
		{"xgithub.com/resiliencekit/payservice", "xgithub.com/resiliencekit/ledger", 1, 0},
		// Untouched.
		{"X-Request-Id: dev_key_do_not_use_in_production", "X-Request-Id: dev_key_do_not_use_in_production", 0, 0},
		{"payſervice", "payſervice", 0, 0}, // ſ folds to s in Unicode, not in ASCII
		{"payservic", "payservic", 0, 0},
	} {
		got, c := r.replace([]byte(tc.in))
		if string(got) != tc.want || c.names != tc.names || c.modules != tc.modules {
			t.Errorf("replace(%q) = %q, %d names, %d module paths; want %q, %d, %d", tc.in, got, c.names, c.modules, tc.want, tc.names, tc.modules)
		}
	}
}

func TestReplace_AModulePathThatHoldsTheNameIsWrittenOnceAndThenKept(t *testing.T) {
	const target = "example.com/payservice-v2"
	first := newRenamer("ledger", target, templateModule)
	in := "import \"github.com/resiliencekit/payservice/internal/app\" // payservice\n"
	once, _ := first.replace([]byte(in))
	if want := "import \"example.com/payservice-v2/internal/app\" // ledger\n"; string(once) != want {
		t.Fatalf("first pass: %q, want %q", once, want)
	}
	// The second run finds go.mod saying target, and keeps it whole.
	again := newRenamer("ledger", target, templateModule, target)
	twice, c := again.replace(once)
	if !bytes.Equal(twice, once) || c != (counts{}) {
		t.Errorf("second pass: %q (%+v), want it unchanged", twice, c)
	}
}

func TestRewriteFile_KeepsMarkedBlocksVerbatim(t *testing.T) {
	r := newRenamer("ledger", "example.com/acme/ledger", templateModule)
	in := "# payservice\n" +
		"<!-- rename:keep-begin -->\n" +
		"gonew github.com/resiliencekit/payservice example.com/acme/ledger\n" +
		"<!-- rename:keep-end -->\n" +
		"payservice_ again\n" +
		"# rename:keep-begin one line, payservice rename:keep-end\n" +
		"Payservice"
	want := "# ledger\n" +
		"<!-- rename:keep-begin -->\n" +
		"gonew github.com/resiliencekit/payservice example.com/acme/ledger\n" +
		"<!-- rename:keep-end -->\n" +
		"ledger_ again\n" +
		"# rename:keep-begin one line, payservice rename:keep-end\n" +
		"Ledger"
	got, c, kept, err := r.rewriteFile("README.md", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want || c.names != 3 || c.modules != 0 {
		t.Errorf("got %q (%+v), want %q with 3 names", got, c, want)
	}
	if wantKept := []keptBlock{{"README.md", 2, 4}, {"README.md", 6, 6}}; len(kept) != 2 || kept[0] != wantKept[0] || kept[1] != wantKept[1] {
		t.Errorf("kept %v, want %v", kept, wantKept)
	}
}

func TestRewriteFile_RefusesUnbalancedKeepMarkers(t *testing.T) {
	r := newRenamer("ledger", "example.com/acme/ledger", templateModule)
	for _, tc := range []struct{ in, want string }{
		{"a\nrename:keep-begin\npayservice\n", "f.md:2: rename:keep-begin without rename:keep-end"},
		{"rename:keep-end\n", "f.md:1: rename:keep-end without rename:keep-begin"},
		{"rename:keep-begin\nrename:keep-begin\n", "f.md:2: rename:keep-begin inside the block begun at line 1"},
	} {
		if _, _, _, err := r.rewriteFile("f.md", []byte(tc.in)); err == nil || err.Error() != tc.want {
			t.Errorf("rewriteFile(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestRewriteFile_RecomputesALockKeyDocumentedAsTheHashOfTheName(t *testing.T) {
	r := newRenamer("ledger", "example.com/acme/ledger", templateModule)
	in := "package p\n\n" +
		"// key is the FNV-1a 32-bit hash of \"payservice-migrations\".\n" +
		"const key int64 = 0x2c9d0ed6\n"
	got, c, _, err := r.rewriteFile("p.go", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := "package p\n\n" +
		"// key is the FNV-1a 32-bit hash of \"ledger-migrations\".\n" +
		"const key int64 = " + hex32(fnv32a("ledger-migrations")) + "\n"
	if string(got) != want || c.keys != 1 {
		t.Errorf("got\n%s(%+v), want\n%s", got, c, want)
	}

	// A comment the constant does not match stops the rename: renaming
	// the comment alone would make it lie.
	bad := strings.Replace(in, "0x2c9d0ed6", "0x12345678", 1)
	if _, _, _, err := r.rewriteFile("p.go", []byte(bad)); err == nil || !strings.Contains(err.Error(), "0x2c9d0ed6") {
		t.Errorf("mismatched lock key: %v, want an error naming the literal it looked for", err)
	}
}

func hex32(v uint32) string {
	const digits = "0123456789abcdef"
	b := []byte("0x00000000")
	for i := 9; i >= 2; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b)
}

func TestRewriteFile_KeepsGoFilesGofmtClean(t *testing.T) {
	r := newRenamer("ledger", "example.com/acme/ledger", templateModule)
	in := "package p\n\nconst (\n" +
		"\tnamespace = \"payservice-e2e\" // the overlay's\n" +
		"\tselector  = \"app=x\"          // the pods'\n" +
		")\n"
	got, _, _, err := r.rewriteFile("p.go", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := "package p\n\nconst (\n" +
		"\tnamespace = \"ledger-e2e\" // the overlay's\n" +
		"\tselector  = \"app=x\"      // the pods'\n" +
		")\n"
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// tree writes files (path → content; a path ending in * is made 0755
// without it) under a new directory.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, content := range files {
		mode := fs.FileMode(0o644)
		if strings.HasSuffix(p, "*") {
			p, mode = strings.TrimSuffix(p, "*"), 0o755
		}
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func read(t *testing.T, dir, p string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func mode(t *testing.T, dir, p string) fs.FileMode {
	t.Helper()
	info, err := os.Stat(filepath.Join(dir, filepath.FromSlash(p)))
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode().Perm()
}

// renameTree runs the command on dir as make would, and returns its exit
// code and output.
func renameTree(dir string, args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"-dir", dir}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestRun_RenamesATreeOnceAndLeavesWhatItMustNotTouch(t *testing.T) {
	binary := "\x7fELF\x00payservice\x00"
	dir := tree(t, map[string]string{
		"go.mod":                        "module github.com/resiliencekit/payservice\n\ngo 1.26\n",
		"sub/go.mod":                    "module github.com/resiliencekit/payservice/sub\n\nreplace github.com/resiliencekit/payservice => ../\n",
		"app/app.go":                    "// Package app is payservice's.\npackage app\n\nimport _ \"github.com/resiliencekit/payservice/internal/x\"\n\n// Name is the metric namespace.\nconst Name = \"payservice\"\n",
		"run.sh":                        "#!/bin/sh\necho payservice\n",
		"lib.sh":                        "# sourced, not run: payservice\n",
		"tool*":                         "#!/bin/sh\n",
		"bin/server":                    binary,
		".git/config":                   "[remote] url = https://github.com/resiliencekit/payservice\n",
		"internal/tools/rename/main.go": "package main\n\nconst templateName = \"payservice\"\n",
		"README.md":                     "# payservice\n<!-- rename:keep-begin -->\nMade from github.com/resiliencekit/payservice.\n<!-- rename:keep-end -->\n",
	})
	code, out, errOut := renameTree(dir, "-name", "ledger", "-module", "example.com/acme/ledger")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for p, want := range map[string]string{
		"go.mod":                        "module example.com/acme/ledger\n\ngo 1.26\n",
		"sub/go.mod":                    "module example.com/acme/ledger/sub\n\nreplace example.com/acme/ledger => ../\n",
		"app/app.go":                    "// Package app is ledger's.\npackage app\n\nimport _ \"example.com/acme/ledger/internal/x\"\n\n// Name is the metric namespace.\nconst Name = \"ledger\"\n",
		"run.sh":                        "#!/bin/sh\necho ledger\n",
		"lib.sh":                        "# sourced, not run: ledger\n",
		"bin/server":                    binary,
		".git/config":                   "[remote] url = https://github.com/resiliencekit/payservice\n",
		"internal/tools/rename/main.go": "package main\n\nconst templateName = \"payservice\"\n",
		"README.md":                     "# ledger\n<!-- rename:keep-begin -->\nMade from github.com/resiliencekit/payservice.\n<!-- rename:keep-end -->\n",
	} {
		if got := read(t, dir, p); got != want {
			t.Errorf("%s:\n%q\nwant\n%q", p, got, want)
		}
	}
	for p, want := range map[string]fs.FileMode{"run.sh": 0o755, "lib.sh": 0o644, "tool": 0o755} {
		if got := mode(t, dir, p); got != want {
			t.Errorf("%s: mode %#o, want %#o", p, got, want)
		}
	}
	for _, want := range []string{
		"module: github.com/resiliencekit/payservice → example.com/acme/ledger",
		"app/app.go", "2 names, 1 module path",
		"run.sh", "1 name, 1 run bit",
		"kept: README.md:2-4",
		"kept: internal/tools/rename/",
		"not renamed, binary: bin/server",
		"changed 6 files: 5 names, 4 module paths, 1 run bit",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	code, out, errOut = renameTree(dir, "-name", "ledger", "-module", "example.com/acme/ledger")
	if code != 0 || !strings.Contains(out, "nothing to change") {
		t.Errorf("second run: exit %d, %s%s; want nothing to change", code, out, errOut)
	}
}

func TestRun_ACopyMadeWithGonewKeepsItsModulePath(t *testing.T) {
	files := map[string]string{
		"go.mod": "module example.com/acme/ledger\n",
		// gonew rewrote imports, not strings.
		"layout_test.go": "package p\n\nconst module = \"github.com/resiliencekit/payservice\"\n",
		"deploy.sh":      "#!/bin/sh\n", // a module zip lost its mode
	}
	dir := tree(t, files)
	if code, _, errOut := renameTree(dir, "-name", "ledger"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got, want := read(t, dir, "layout_test.go"), "package p\n\nconst module = \"example.com/acme/ledger\"\n"; got != want {
		t.Errorf("layout_test.go: %q, want %q", got, want)
	}
	if got := mode(t, dir, "deploy.sh"); got != 0o755 {
		t.Errorf("deploy.sh: mode %#o, want 0755", got)
	}
	// The same path given again is fine.
	if code, _, errOut := renameTree(dir, "-name", "ledger", "-module", "example.com/acme/ledger"); code != 0 {
		t.Errorf("MODULE equal to go.mod's: exit %d: %s", code, errOut)
	}
}

func TestRun_RefusesWhatItCannotDoAndNamesTheVariable(t *testing.T) {
	clone := map[string]string{"go.mod": "module github.com/resiliencekit/payservice\n", "a.txt": "payservice\n"}
	for _, tc := range []struct {
		name  string
		files map[string]string
		args  []string
		code  int
		want  string
	}{
		{"no NAME", clone, nil, 1, "NAME is required"},
		{"bad NAME", clone, []string{"-name", "Ledger", "-module", "example.com/x"}, 1, `NAME="Ledger"`},
		{"clone without MODULE", clone, []string{"-name", "ledger"}, 1, "MODULE is required: go.mod still says module github.com/resiliencekit/payservice"},
		{"bad MODULE", clone, []string{"-name", "ledger", "-module", "ledger"}, 1, `MODULE="ledger" is not a module path`},
		{"gonew copy, other MODULE", map[string]string{"go.mod": "module example.com/acme/ledger\n"},
			[]string{"-name", "ledger", "-module", "example.com/acme/other"}, 1, `MODULE="example.com/acme/other": go.mod says module example.com/acme/ledger already`},
		{"no go.mod", map[string]string{"a.txt": "payservice\n"}, []string{"-name", "ledger"}, 1, "run it at the root of the copy"},
		{"an argument", clone, []string{"-name", "ledger", "ledger"}, 2, `unexpected argument "ledger"`},
		{"keyword", map[string]string{"go.mod": "module example.com/x\n", "p/p.go": "package p\n\nfunc payservice() {}\n"},
			[]string{"-name", "func"}, 1, `NAME="func": p/p.go:3:6: the Go identifier payservice would become func, a Go keyword`},
		{"predeclared", map[string]string{"go.mod": "module example.com/x\n", "p/p.go": "package p\n\nvar payservice = 1\n"},
			[]string{"-name", "len"}, 1, "a predeclared Go identifier"},
		{"collision", map[string]string{"go.mod": "module example.com/x\n", "p/p.go": "package p\n\nimport \"resilience\"\n\nfunc payservice() { resilience.X() }\n"},
			[]string{"-name", "resilience"}, 1, "the Go identifier payservice would become resilience, already an identifier in p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tree(t, tc.files)
			code, out, errOut := renameTree(dir, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.code, tc.want)
			}
			if out != "" {
				t.Errorf("a refused run printed a summary:\n%s", out)
			}
			for p, content := range tc.files {
				if got := read(t, dir, p); got != content {
					t.Errorf("a refused run changed %s: %q", p, got)
				}
			}
		})
	}
}

func TestRun_DryRunChangesNothing(t *testing.T) {
	files := map[string]string{"go.mod": "module github.com/resiliencekit/payservice\n", "run.sh": "#!/bin/sh\npayservice\n"}
	dir := tree(t, files)
	code, out, errOut := renameTree(dir, "-n", "-name", "ledger", "-module", "example.com/acme/ledger")
	if code != 0 || !strings.Contains(out, "would change 2 files") {
		t.Fatalf("exit %d, %s%s", code, out, errOut)
	}
	for p, content := range files {
		if got := read(t, dir, p); got != content {
			t.Errorf("-n changed %s: %q", p, got)
		}
	}
	if got := mode(t, dir, "run.sh"); got != 0o644 {
		t.Errorf("-n changed run.sh's mode to %#o", got)
	}
}

func TestRun_HelpExitsZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-h"}, &stdout, &stderr); code != 0 || !strings.Contains(stderr.String(), "make rename NAME=") {
		t.Errorf("-h: exit %d, %q", code, stderr.String())
	}
}

// The rename restores run bits by one rule, #! at the start; in the
// template that must be exactly the files git marks executable.
func TestRunBits_TheTemplateMarksExecutableExactlyItsScripts(t *testing.T) {
	root := templateRoot(t)
	cmd := exec.Command("git", "ls-files", "-s", "-z")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("git ls-files: %v: not a clone", err)
	}
	for entry := range strings.SplitSeq(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		meta, p, _ := strings.Cut(entry, "\t")
		data, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			continue // deleted in the working tree, or a submodule
		}
		executable := strings.HasPrefix(meta, "100755")
		if script := bytes.HasPrefix(data, []byte("#!")); script != executable {
			t.Errorf("%s: git mode %s, starts with #!: %v; rename gives a copy's files their run bit back by #! alone: "+
				"make a script executable (git update-index --chmod=+x) and drop #! from what is not one", p, meta[:6], script)
		}
	}
}
