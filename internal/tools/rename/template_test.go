package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

// The service a template test makes. Its module path's last element is
// its name, as gonew's default directory would be.
const (
	copyName   = "ledger"
	copyModule = "example.com/acme/ledger"
)

// TestTemplate_BothWaysOfCopyingItGiveAServiceThatBuildsOnceRenamed takes
// the two paths the README offers a new service, on the working tree as it
// would be pushed (tracked and untracked-but-not-ignored files):
//
//   - gonew: the tree packed as module zips (the root, and each nested
//     module as its own), served by a file:// GOPROXY, copied by the gonew
//     pinned in go.mod, renamed with make rename NAME=…; then built,
//     vetted, and its unit tests run: those of every package whose test
//     binary does not link testcontainers-go (the others need Docker).
//     Such a copy has no nested modules: the test checks that, and that
//     make test and make lint stop and say why. Then gonew copies each
//     nested module into its directory, make rename runs again, and they
//     are built, vetted and tested as in a clone.
//   - clone: the tree copied with its nested modules, renamed with make
//     rename NAME=… MODULE=…; then every module built and vetted (vet
//     compiles their tests) and the nested modules' Docker-free tests run,
//     which render the renamed manifests and compose file.
//
// Each rename runs twice and must change nothing the second time.
//
// The copies build with the outer GOMODCACHE and GOCACHE, GOPROXY=off
// (nothing is downloaded), GOTOOLCHAIN=local, and GOFLAGS=-trimpath with
// CGO_ENABLED=0, as make build builds: -trimpath keeps the temporary
// directory out of the build cache's keys, so a second run reuses the
// first's compilations.
//
// It runs only in the template itself: in a renamed copy (where its own
// copy of this test runs among the unit tests) there is nothing to check.
func TestTemplate_BothWaysOfCopyingItGiveAServiceThatBuildsOnceRenamed(t *testing.T) {
	root := templateRoot(t)
	if testing.Short() {
		t.Skip("copies, builds and tests the template twice: minutes; runs without -short")
	}
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-20*time.Second))
		t.Cleanup(cancel)
	}
	h := newHarness(t, ctx, root)
	files := repoFiles(t, root)
	work := t.TempDir()

	t.Run("gonew", func(t *testing.T) {
		src := filepath.Join(work, "src")
		stage(t, root, src, files)
		nested := nestedModules(t, src)
		proxy := filepath.Join(work, "proxy")
		version := writeProxy(t, src, proxy, nested)

		gonew := strings.TrimSpace(h.run(t, root, h.toolEnv, "go", "tool", "-n", "gonew"))
		env := h.env(
			"GOMODCACHE="+filepath.Join(work, "modcache"), // the pseudo-version's content changes run to run
			"GOFLAGS=-modcacherw",                         // so that t.TempDir can remove it
			"GOPROXY=file://"+filepath.ToSlash(proxy),
			"GOSUMDB=off",
		)
		dst := filepath.Join(work, "gonew", copyName)
		h.run(t, work, env, gonew, templateModule+"@"+version, copyModule, dst)

		for _, m := range nested {
			if _, err := os.Stat(filepath.Join(dst, m)); !os.IsNotExist(err) {
				t.Errorf("%s/ is in the gonew copy (%v): the README says a module zip leaves nested modules out", m, err)
			}
		}
		for _, s := range scripts(t, dst) {
			if s.mode&0o111 != 0 {
				t.Errorf("%s has mode %#o in the gonew copy: the README says module zips drop run bits", s.path, s.mode)
			}
		}

		h.rename(t, dst, "NAME="+copyName)
		h.checkRenamed(t, dst, files)
		h.run(t, dst, h.copyEnv, "go", "build", "./...")
		h.run(t, dst, h.copyEnv, "go", "vet", "./...")
		pkgs := h.dockerFree(t, dst)
		if len(pkgs) < 5 {
			t.Fatalf("only %d packages without Docker to test: %v", len(pkgs), pkgs)
		}
		h.run(t, dst, h.copyEnv, "go", append([]string{"test", "-count=1", "-timeout=5m"}, pkgs...)...)

		// make stops at once, naming what is missing and why.
		for target, missing := range map[string][]string{"test": {"deploy_test"}, "lint": nested} {
			out, err := h.command(dst, h.copyEnv, "make", target).CombinedOutput()
			says := strings.Contains(string(out), "missing. A copy made with gonew lacks the nested modules")
			for _, m := range missing {
				says = says && strings.Contains(string(out), " "+m+"/")
			}
			if err == nil || !says {
				t.Errorf("make %s in the gonew copy: %v, want a failure that says %v/ are missing and why:\n%s", target, err, missing, out)
			}
		}

		// The nested modules are modules of their own: gonew copies each
		// into its directory, and renaming again rewrites what gonew does
		// not (their replace ../ and their imports of the service).
		for _, m := range nested {
			h.run(t, work, env, gonew, templateModule+"/"+m+"@"+version, copyModule+"/"+m, filepath.Join(dst, m))
		}
		h.rename(t, dst, "NAME="+copyName)
		h.checkRenamed(t, dst, files)
		h.checkModules(t, dst, nested)
	})

	t.Run("clone", func(t *testing.T) {
		dst := filepath.Join(work, "clone", copyName)
		stage(t, root, dst, files)
		nested := nestedModules(t, dst)
		if len(nested) == 0 {
			t.Fatal("no nested modules found: the clone path exists to keep them")
		}
		h.rename(t, dst, "NAME="+copyName, "MODULE="+copyModule)
		h.checkRenamed(t, dst, files)
		h.run(t, dst, h.copyEnv, "go", "build", "./...")
		h.run(t, dst, h.copyEnv, "go", "vet", "./...")
		// The root's tests ran in the gonew copy, from the same sources.
		h.checkModules(t, dst, nested)
	})
}

// checkModules builds and vets each nested module of the copy at dir (vet
// compiles the tests, those behind the k8se2e tag too), and runs the
// tests that need no Docker: for deploy_test, those that render the
// renamed manifests and compose file.
func (h *harness) checkModules(t *testing.T, dir string, nested []string) {
	t.Helper()
	for _, m := range nested {
		mdir := filepath.Join(dir, m)
		h.run(t, mdir, h.copyEnv, "go", "build", "./...")
		h.run(t, mdir, h.copyEnv, "go", "vet", "-tags=k8se2e", "./...")
		if pkgs := h.dockerFree(t, mdir); len(pkgs) > 0 {
			h.run(t, mdir, h.copyEnv, "go", append([]string{"test", "-count=1", "-timeout=5m"}, pkgs...)...)
		}
	}
}

// templateRoot is the module root, if this is the template; otherwise the
// test is skipped.
func templateRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := modfile.ModulePath(data); m != templateModule {
		t.Skipf("module %s is not the template %s: a renamed copy has nothing left to check", m, templateModule)
	}
	return root
}

// harness runs commands against copies, with the environment each needs.
type harness struct {
	ctx     context.Context
	base    []string // the outer environment, less what could change how go behaves
	toolEnv []string // for go tool in the template
	copyEnv []string // for everything run in a copy

	// unformatted are the template's Go files gofmt would change: make
	// lint's to report, not a copy's.
	unformatted []string
}

func newHarness(t *testing.T, ctx context.Context, root string) *harness {
	h := &harness{ctx: ctx}
	// The caches the outer go uses (GOENV=off below would hide a go env
	// file that sets them).
	out := h.run(t, root, os.Environ(), "go", "env", "GOMODCACHE", "GOCACHE", "GOPROXY")
	vals := strings.Split(strings.TrimSpace(out), "\n")
	if len(vals) != 3 {
		t.Fatalf("go env: %q", out)
	}
	// Go's settings are the test's own, but where the toolchain and
	// scratch space are; make's (a jobserver, NAME, MODULE) stay out.
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		keep := !strings.HasPrefix(k, "GO") && !strings.HasPrefix(k, "CGO_") && !strings.HasPrefix(k, "MAKE") &&
			k != "MFLAGS" && k != "NAME" && k != "MODULE"
		if keep || k == "GOROOT" || k == "GOPATH" || k == "GOTMPDIR" {
			h.base = append(h.base, kv)
		}
	}
	h.base = append(h.base, "GOENV=off", "GOWORK=off", "GOTOOLCHAIN=local", "GOFLAGS=",
		"GOMODCACHE="+vals[0], "GOCACHE="+vals[1])
	h.toolEnv = h.env("GOPROXY=" + vals[2]) // as go tool gonew would build it in the template
	h.copyEnv = h.env("GOPROXY=off", "GOSUMDB=off", "GOFLAGS=-trimpath", "CGO_ENABLED=0")
	var err error
	if h.unformatted, err = gofmtDiffers(root); err != nil {
		t.Fatal(err)
	}
	return h
}

// env is the base environment with kv added; a later entry wins.
func (h *harness) env(kv ...string) []string {
	return append(slices.Clip(h.base), kv...)
}

func (h *harness) command(dir string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(h.ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs a command, and fails the test with its output if it fails.
func (h *harness) run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := h.command(dir, env, name, args...).CombinedOutput()
	line := strings.Join(append([]string{name}, args...), " ")
	if err != nil {
		t.Fatalf("in %s: %s: %v\n%s", dir, line, err, out)
	}
	t.Logf("%s: %s (%.1fs)", filepath.Base(dir), line, time.Since(start).Seconds())
	return string(out)
}

// rename runs make rename twice in dir: the second must change nothing.
func (h *harness) rename(t *testing.T, dir string, vars ...string) {
	t.Helper()
	out := h.run(t, dir, h.copyEnv, "make", append([]string{"--no-print-directory", "rename"}, vars...)...)
	t.Logf("make rename %s:\n%s", strings.Join(vars, " "), out)
	before := treeHash(t, dir)
	out = h.run(t, dir, h.copyEnv, "make", append([]string{"--no-print-directory", "rename"}, vars...)...)
	if after := treeHash(t, dir); after != before || !strings.Contains(out, "nothing to change") {
		t.Errorf("make rename %s again changed the tree (%s → %s):\n%s", strings.Join(vars, " "), before, after, out)
	}
}

// checkRenamed checks a renamed copy: the template's name left only where
// kept, scripts runnable, one module path, the metric namespace, gofmt.
func (h *harness) checkRenamed(t *testing.T, dir string, files []repoFile) {
	t.Helper()
	if left := leftovers(t, dir); len(left) > 0 {
		t.Errorf("%q left in %d lines outside %s/ and kept blocks:\n%s", templateName, len(left), selfDir, strings.Join(left[:min(len(left), 30)], "\n"))
	}

	executable := map[string]bool{}
	for _, f := range files {
		executable[f.path] = f.mode&0o111 != 0
	}
	for _, s := range scripts(t, dir) {
		if s.mode&0o111 == 0 {
			t.Errorf("%s starts with #! but has mode %#o", s.path, s.mode)
		}
		delete(executable, s.path)
	}
	for p, x := range executable {
		if _, err := os.Stat(filepath.Join(dir, p)); x && err == nil {
			t.Errorf("%s is executable in the template but not a #! script: renaming does not restore its run bit", p)
		}
	}

	goMods := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "go.mod" {
			return err
		}
		goMods++
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f, err := modfile.Parse(p, data, nil)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, filepath.Dir(p))
		if want := path.Join(copyModule, filepath.ToSlash(rel)); f.Module.Mod.Path != want {
			t.Errorf("%s says module %s, want %s", p, f.Module.Mod.Path, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := h.run(t, dir, h.copyEnv, "go", "list", "./...")
	for _, p := range strings.Fields(out) {
		if p != copyModule && !strings.HasPrefix(p, copyModule+"/") {
			t.Errorf("package %s is outside %s", p, copyModule)
		}
	}

	// The metrics' namespace is internal/app's Name (Name+"_").
	if got := stringConst(t, filepath.Join(dir, "internal", "app", "serve.go"), "Name"); got != copyName {
		t.Errorf("internal/app.Name, the metric namespace, is %q, want %q", got, copyName)
	}

	unformatted, err := gofmtDiffers(dir)
	if err != nil {
		t.Fatal(err)
	}
	unformatted = slices.DeleteFunc(unformatted, func(p string) bool { return slices.Contains(h.unformatted, p) })
	if len(unformatted) > 0 {
		t.Errorf("renaming left Go files gofmt would change (make lint fails on them): %v", unformatted)
	}
}

// dockerFree lists the packages of the module at dir whose tests need no
// Docker: those whose test binary does not link testcontainers-go.
func (h *harness) dockerFree(t *testing.T, dir string) []string {
	t.Helper()
	out := h.run(t, dir, h.copyEnv, "go", "list", "-test", "-f", `{{.ImportPath}}|{{.ForTest}}|{{join .Deps " "}}`, "./...")
	var pkgs []string
	for line := range strings.Lines(out) {
		parts := strings.SplitN(strings.TrimSpace(line), "|", 3)
		if len(parts) != 3 || parts[1] != "" || !strings.HasSuffix(parts[0], ".test") {
			continue
		}
		if !slices.Contains(strings.Fields(parts[2]), "github.com/testcontainers/testcontainers-go") {
			pkgs = append(pkgs, strings.TrimSuffix(parts[0], ".test"))
		}
	}
	return pkgs
}

// repoFile is a file the repository would push, and its mode here.
type repoFile struct {
	path string
	mode fs.FileMode
}

// repoFiles lists the tree as a push would carry it: tracked files and
// untracked ones git does not ignore (bin/, reports and binaries stay out).
func repoFiles(t *testing.T, root string) []repoFile {
	t.Helper()
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files (the test lists the template's files with git; run it in a clone): %v", err)
	}
	var files []repoFile
	for p := range strings.SplitSeq(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		info, err := os.Lstat(filepath.Join(root, p))
		if os.IsNotExist(err) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().IsRegular() || info.Mode()&fs.ModeSymlink != 0 {
			files = append(files, repoFile{p, info.Mode()})
		}
	}
	if len(files) < 100 {
		t.Fatalf("git ls-files listed %d files", len(files))
	}
	return files
}

// stage copies files from root to dst, with their modes.
func stage(t *testing.T, root, dst string, files []repoFile) {
	t.Helper()
	for _, f := range files {
		from, to := filepath.Join(root, f.path), filepath.Join(dst, f.path)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.mode&fs.ModeSymlink != 0 {
			target, err := os.Readlink(from)
			if err == nil {
				err = os.Symlink(target, to)
			}
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, f.mode.Perm()); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(to, f.mode.Perm()); err != nil { // WriteFile's mode is masked by umask
			t.Fatal(err)
		}
	}
}

// writeProxy lays out a file:// GOPROXY that serves src as the template
// module, and each nested module of it as its own, at one pseudo-version,
// which it returns.
func writeProxy(t *testing.T, src, proxy string, nested []string) string {
	t.Helper()
	when := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	version := module.PseudoVersion("v0", "", when, "000000000000")
	info, err := json.Marshal(map[string]any{"Version": version, "Time": when})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range append([]string{"."}, nested...) {
		modPath := path.Join(templateModule, m)
		escaped, err := module.EscapePath(modPath)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(proxy, filepath.FromSlash(escaped), "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var z bytes.Buffer
		if err := zip.CreateFromDir(&z, module.Version{Path: modPath, Version: version}, filepath.Join(src, m)); err != nil {
			t.Fatalf("%s: %v", modPath, err)
		}
		gomod, err := os.ReadFile(filepath.Join(src, m, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{
			"list":            []byte(version + "\n"),
			version + ".info": info,
			version + ".mod":  gomod,
			version + ".zip":  z.Bytes(),
		} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return version
}

// nestedModules lists, slash-separated, the directories below dir with a
// go.mod of their own.
func nestedModules(t *testing.T, dir string) []string {
	t.Helper()
	var mods []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "go.mod" || filepath.Dir(p) == dir {
			return err
		}
		rel, err := filepath.Rel(dir, filepath.Dir(p))
		mods = append(mods, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mods
}

// scripts lists the files under dir that start with #!.
func scripts(t *testing.T, dir string) []repoFile {
	t.Helper()
	var found []repoFile
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		head := make([]byte, 2)
		n, _ := f.Read(head)
		f.Close()
		if n == 2 && string(head) == "#!" {
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			found = append(found, repoFile{filepath.ToSlash(rel), info.Mode().Perm()})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Fatalf("no #! script under %s", dir)
	}
	return found
}

// leftovers lists the lines of text files under dir, outside this
// command's directory and kept blocks, that still hold the template's name.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() && (d.Name() == ".git" || rel == selfDir) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil || isBinary(data) {
			return err
		}
		kept := false
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, len(data)+1)
		for n := 1; sc.Scan(); n++ {
			line := sc.Bytes()
			if bytes.Contains(line, []byte(keepBegin)) {
				kept = true
			}
			if !kept && containsName(line) {
				left = append(left, rel+":"+strconv.Itoa(n)+": "+string(line))
			}
			if bytes.Contains(line, []byte(keepEnd)) {
				kept = false
			}
		}
		return sc.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// treeHash hashes every path, mode and content under dir.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var data []byte
		if info.Mode().IsRegular() {
			data, err = os.ReadFile(p)
		} else if info.Mode()&fs.ModeSymlink != 0 {
			var target string
			target, err = os.Readlink(p)
			data = []byte(target)
		}
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		rel, _ := filepath.Rel(dir, p)
		h.Write([]byte(rel + "\x00" + info.Mode().String() + "\x00" + hex.EncodeToString(sum[:]) + "\n"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// stringConst is the value of the string constant name declared in file.
func stringConst(t *testing.T, file, name string) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, id := range vs.Names {
				if id.Name != name || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					return s
				}
			}
		}
	}
	t.Fatalf("%s declares no string constant %s", file, name)
	return ""
}

// gofmtDiffers lists the Go files under dir that gofmt would change, as
// gofmt -l does.
func gofmtDiffers(dir string) ([]string, error) {
	var differ []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if out, err := format.Source(data); err != nil || !bytes.Equal(out, data) {
			rel, _ := filepath.Rel(dir, p)
			differ = append(differ, filepath.ToSlash(rel))
		}
		return nil
	})
	return differ, err
}
