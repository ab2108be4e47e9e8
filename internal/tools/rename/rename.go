package main

import (
	"bytes"
	"errors"
	"fmt"
	"go/format"
	"go/scanner"
	"go/token"
	"go/types"
	"hash/fnv"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
)

const (
	// templateName and templateModule are what a copy of the template is
	// renamed from.
	templateName   = "payservice"
	templateModule = "github.com/resiliencekit/payservice"

	// Lines from one holding keepBegin to one holding keepEnd are copied
	// verbatim: whatever must go on naming the template (a credit, the
	// commands that copy it).
	keepBegin = "rename:keep-begin"
	keepEnd   = "rename:keep-end"

	// selfDir is this command's directory, which it never rewrites: its
	// source names the template it renames from.
	selfDir = "internal/tools/rename"

	// maxNameLen bounds NAME by the tightest limit among the names made
	// from it: the CI's iptables chain NAME-K8S-GUARD, upper-cased, must
	// fit iptables' 28 characters.
	maxNameLen = 18
)

var nameRule = fmt.Sprintf("lowercase letters a-z and digits, starting with a letter, at most %d", maxNameLen)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// dependencies are names the template already gives to other workloads
// beside the service: Deployments, Services, images, compose services
// (prometheus and grafana: the observability profile's).
var dependencies = []string{"fakeprovider", "grafana", "postgres", "prometheus", "redis"}

// checkName says why name cannot replace the template's name, if it
// cannot. Its rule is the intersection of where the name goes: a DNS label
// (Kubernetes names and namespaces, hostnames) forbids '_' and capitals; a
// Prometheus metric prefix and a Go identifier forbid '-'; an image name
// forbids capitals.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("NAME is required: make rename NAME=ledger [MODULE=example.com/acme/ledger]")
	case !nameRE.MatchString(name):
		return fmt.Errorf("NAME=%q: use %s: the name becomes a Kubernetes name and DNS label (no '_', no capitals), "+
			"an image name, a Postgres user, a Go identifier and the metric prefix NAME_ (no '-')", name, nameRule)
	case len(name) > maxNameLen:
		return fmt.Errorf("NAME=%q has %d characters, at most %d fit: the longest name made from it, the CI's iptables chain %s-K8S-GUARD, must fit iptables' 28",
			name, len(name), maxNameLen, strings.ToUpper(name))
	case slices.Contains(dependencies, name):
		return fmt.Errorf("NAME=%q is taken: the template's %s, one of the service's dependencies, already has that Deployment, Service, image and compose name", name, name)
	}
	return nil
}

// options are the command line's.
type options struct {
	dir, name, module string
	dryRun            bool
}

// counts are the replacements made in one file, or in all.
type counts struct {
	names, modules, keys, modes int
}

func (c *counts) add(o counts) {
	c.names += o.names
	c.modules += o.modules
	c.keys += o.keys
	c.modes += o.modes
}

func (c counts) String() string {
	var parts []string
	for _, p := range []struct {
		n        int
		one, any string
	}{
		{c.names, "name", "names"},
		{c.modules, "module path", "module paths"},
		{c.keys, "lock key", "lock keys"},
		{c.modes, "run bit", "run bits"},
	} {
		switch {
		case p.n == 1:
			parts = append(parts, "1 "+p.one)
		case p.n > 1:
			parts = append(parts, strconv.Itoa(p.n)+" "+p.any)
		}
	}
	return strings.Join(parts, ", ")
}

// change is what renaming does to one file.
type change struct {
	path          string // slash-separated, relative to the root
	abs           string
	data          []byte // the new content; nil if unchanged
	mode, newMode fs.FileMode
	counts
}

// keptBlock is a block of lines the renamer copied verbatim.
type keptBlock struct {
	path     string
	from, to int // line numbers, inclusive
}

// planned is a rename worked out, not yet written.
type planned struct {
	dir, name         string
	fromModule        string // the root go.mod's module path before
	module            string // and after
	changes           []*change
	kept              []keptBlock
	binaries          []string // binary files that hold the name, left alone
	total             counts
	templateNameFound bool // in some text file, kept or not
	skippedSelf       bool // selfDir is in the tree, left alone
}

// renamer rewrites text: the module paths it was given to its module, and
// the template's name, in any case, to its name in the same case.
type renamer struct {
	name, upper, title string
	oldModules         []string // longest first, so a longer path wins
	module             string
}

func newRenamer(name, module string, oldModules ...string) *renamer {
	r := &renamer{
		name:   name,
		upper:  strings.ToUpper(name),
		title:  strings.ToUpper(name[:1]) + name[1:],
		module: module,
	}
	for _, m := range oldModules {
		if m != "" && !slices.Contains(r.oldModules, m) {
			r.oldModules = append(r.oldModules, m)
		}
	}
	slices.SortFunc(r.oldModules, func(a, b string) int { return len(b) - len(a) })
	return r
}

// replace rewrites s in one pass, so that nothing it writes is matched
// again: a module path holding the template's name stays whole.
func (r *renamer) replace(s []byte) ([]byte, counts) {
	var c counts
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		if m := r.modulePathAt(s, i); m != "" {
			out = append(out, r.module...)
			if m != r.module {
				c.modules++
			}
			i += len(m)
			continue
		}
		if n := len(templateName); i+n <= len(s) && asciiEqualFold(s[i:i+n], templateName) {
			sp := r.spelling(s[i : i+n])
			out = append(out, sp...)
			if sp != string(s[i:i+n]) {
				c.names++
			}
			i += n
			continue
		}
		out = append(out, s[i])
		i++
	}
	return out, c
}

// modulePathAt returns the old module path that starts at s[i] as a whole
// path (github.com/resiliencekit/payservice/bench and ….git count,
// xgithub.com/… and …/payservice2 do not), or "".
func (r *renamer) modulePathAt(s []byte, i int) string {
	if i > 0 && (isPathByte(s[i-1]) || s[i-1] == '.') {
		return ""
	}
	for _, m := range r.oldModules {
		if bytes.HasPrefix(s[i:], []byte(m)) {
			if j := i + len(m); j == len(s) || !isPathByte(s[j]) {
				return m
			}
		}
	}
	return ""
}

func isPathByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_' || b == '~'
}

// spelling is the name spelt as m spells the template's name: all lower
// case, all upper case (environment variables, iptables chains), or with
// a capital (Go identifiers, sentences).
func (r *renamer) spelling(m []byte) string {
	switch string(m) {
	case templateName:
		return r.name
	case strings.ToUpper(templateName):
		return r.upper
	}
	if 'A' <= m[0] && m[0] <= 'Z' {
		return r.title
	}
	return r.name
}

// asciiEqualFold compares ASCII only: a non-ASCII letter that Unicode
// folds to an ASCII one is not the template's name.
func asciiEqualFold(b []byte, s string) bool {
	for i := range len(s) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func containsName(b []byte) bool {
	for i := 0; i+len(templateName) <= len(b); i++ {
		if asciiEqualFold(b[i:], templateName) {
			return true
		}
	}
	return false
}

// lockKeyRE finds a comment that documents a constant as the FNV-1a hash
// of a string; the constant is recomputed when the string is renamed.
var lockKeyRE = regexp.MustCompile(`FNV-1a(?:\s|//)+(?:32-bit(?:\s|//)+)?hash(?:\s|//)+of(?:\s|//)+"([^"\n]*)"`)

func fnv32a(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// rewriteFile renames in the text of the file at path (slash-separated),
// except in kept blocks.
func (r *renamer) rewriteFile(path string, data []byte) ([]byte, counts, []keptBlock, error) {
	var (
		c      counts
		kept   []keptBlock
		out    = make([]byte, 0, len(data))
		inKeep bool
		from   int
	)
	line := 0
	for rest := data; len(rest) > 0; {
		line++
		l := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			l = rest[:i+1]
		}
		rest = rest[len(l):]
		begin, end := bytes.Contains(l, []byte(keepBegin)), bytes.Contains(l, []byte(keepEnd))
		switch {
		case begin && inKeep:
			return nil, c, nil, fmt.Errorf("%s:%d: %s inside the block begun at line %d", path, line, keepBegin, from)
		case begin:
			inKeep, from = true, line
		case end && !inKeep:
			return nil, c, nil, fmt.Errorf("%s:%d: %s without %s", path, line, keepEnd, keepBegin)
		}
		if inKeep {
			out = append(out, l...)
			if end {
				inKeep = false
				kept = append(kept, keptBlock{path, from, line})
			}
			continue
		}
		nl, lc := r.replace(l)
		out = append(out, nl...)
		c.add(lc)
	}
	if inKeep {
		return nil, c, nil, fmt.Errorf("%s:%d: %s without %s", path, from, keepBegin, keepEnd)
	}
	if !strings.HasSuffix(path, ".go") || c.names+c.modules == 0 {
		return out, c, kept, nil
	}
	for _, m := range lockKeyRE.FindAllSubmatch(data, -1) {
		s := string(m[1])
		ns, _ := r.replace(m[1])
		if string(ns) == s {
			continue
		}
		old, nu := fmt.Sprintf("0x%08x", fnv32a(s)), fmt.Sprintf("0x%08x", fnv32a(string(ns)))
		n := bytes.Count(out, []byte(old))
		if n == 0 {
			return nil, c, nil, fmt.Errorf("%s: a comment says a constant is the FNV-1a 32-bit hash of %q, but the file has no literal %s: make the comment and the constant agree first", path, s, old)
		}
		out = bytes.ReplaceAll(out, []byte(old), []byte(nu))
		c.keys += n
	}
	// A longer or shorter string can move gofmt's alignment of the
	// comments and values around it.
	formatted, err := format.Source(out)
	if err != nil {
		return nil, c, nil, notGoError{fmt.Errorf("%s: not valid Go once renamed: %w", path, err)}
	}
	return formatted, c, kept, nil
}

// notGoError is a Go file that renaming would break; checkIdents, which
// runs later, says why more precisely when an identifier is the cause.
type notGoError struct{ error }

// isBinary reports content that is not text: it holds a NUL byte or is
// not UTF-8.
func isBinary(data []byte) bool {
	return bytes.IndexByte(data, 0) >= 0 || !utf8.Valid(data)
}

// runnable is mode with the run bit for everyone who may read, if it has
// no run bit yet and data is a script.
func runnable(data []byte, mode fs.FileMode) fs.FileMode {
	if !bytes.HasPrefix(data, []byte("#!")) || mode&0o111 != 0 {
		return mode
	}
	return mode | (mode&0o444)>>2
}

// goIdent is an identifier that holds the template's name.
type goIdent struct {
	pos, name string
}

// goIdents lists a package directory's identifiers: all, and those that
// renaming changes.
type goIdents struct {
	all     map[string]bool
	renamed []goIdent
}

func (g *goIdents) scan(path string, src []byte) {
	fset := token.NewFileSet()
	var s scanner.Scanner
	s.Init(fset.AddFile(path, -1, len(src)), src, nil, 0)
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			return
		}
		if tok != token.IDENT {
			continue
		}
		g.all[lit] = true
		if containsName([]byte(lit)) {
			g.renamed = append(g.renamed, goIdent{fset.Position(pos).String(), lit})
		}
	}
}

// plan works out the rename of the tree at o.dir.
func plan(o options) (*planned, error) {
	if err := checkName(o.name); err != nil {
		return nil, err
	}
	gomod, err := os.ReadFile(filepath.Join(o.dir, "go.mod"))
	if err != nil {
		return nil, fmt.Errorf("%w: run it at the root of the copy, or give -dir", err)
	}
	current := modfile.ModulePath(gomod)
	if current == "" {
		return nil, fmt.Errorf("%s: no module line", filepath.Join(o.dir, "go.mod"))
	}
	target := current
	switch {
	case o.module != "":
		if err := module.CheckPath(o.module); err != nil {
			return nil, fmt.Errorf("MODULE=%q is not a module path: %w", o.module, err)
		}
		if current != templateModule && current != o.module {
			return nil, fmt.Errorf("MODULE=%q: go.mod says module %s already, not the template's %s (made with gonew?); "+
				"this command rewrites only the template's path: leave MODULE out to keep %s", o.module, current, templateModule, current)
		}
		target = o.module
	case current == templateModule:
		return nil, fmt.Errorf("MODULE is required: go.mod still says module %s, the template's; give the new service's, e.g. make rename NAME=%s MODULE=example.com/acme/%s",
			templateModule, o.name, o.name)
	}

	p := &planned{dir: o.dir, name: o.name, fromModule: current, module: target}
	r := newRenamer(o.name, target, templateModule, current)
	idents := map[string]*goIdents{}
	var broken []error
	walkErr := filepath.WalkDir(o.dir, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(o.dir, abs)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.Name() == ".git":
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		case rel == selfDir:
			p.skippedSelf = true
			return filepath.SkipDir
		case d.IsDir() || !d.Type().IsRegular(): // symlinks point at files renamed where they are
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(abs)
		if err != nil {
			return err
		}
		c := &change{path: rel, abs: abs, mode: info.Mode().Perm()}
		c.newMode = runnable(data, c.mode)
		if c.newMode != c.mode {
			c.modes = 1
		}
		if isBinary(data) {
			if containsName(data) {
				p.binaries = append(p.binaries, rel)
			}
		} else {
			if containsName(data) {
				p.templateNameFound = true
			}
			if strings.HasSuffix(rel, ".go") {
				dir := path.Dir(rel)
				if idents[dir] == nil {
					idents[dir] = &goIdents{all: map[string]bool{}}
				}
				idents[dir].scan(rel, data)
			}
			out, fc, kept, err := r.rewriteFile(rel, data)
			var notGo notGoError
			if errors.As(err, &notGo) {
				broken = append(broken, err)
				return nil
			}
			if err != nil {
				return err
			}
			p.kept = append(p.kept, kept...)
			c.add(fc)
			if !bytes.Equal(out, data) {
				c.data = out
			}
		}
		if c.data != nil || c.newMode != c.mode {
			p.changes = append(p.changes, c)
			p.total.add(c.counts)
		}
		return nil
	})
	if walkErr != nil {
		return nil, walkErr
	}
	if err := checkIdents(r, idents); err != nil {
		return nil, err
	}
	if len(broken) > 0 {
		return nil, errors.Join(broken...)
	}
	for _, c := range p.changes {
		if c.path == "go.mod" && c.data != nil {
			if got := modfile.ModulePath(c.data); got != target {
				return nil, fmt.Errorf("go.mod would say module %q, not %q: not renamed", got, target)
			}
		}
	}
	return p, nil
}

// checkIdents refuses a rename that would turn a Go identifier into a
// keyword, a predeclared name, or one its package already uses (which
// might redeclare it, or shadow what it names).
func checkIdents(r *renamer, idents map[string]*goIdents) error {
	var errs []error
	for _, dir := range slices.Sorted(maps.Keys(idents)) {
		g := idents[dir]
		for _, id := range g.renamed {
			b, _ := r.replace([]byte(id.name))
			nu := string(b)
			var why string
			switch {
			case nu == id.name:
				continue
			case token.IsKeyword(nu):
				why = "a Go keyword"
			case types.Universe.Lookup(nu) != nil:
				why = "a predeclared Go identifier"
			case g.all[nu]:
				why = "already an identifier in " + dir
			default:
				continue
			}
			errs = append(errs, fmt.Errorf("NAME=%q: %s: the Go identifier %s would become %s, %s: rename it by hand first", r.name, id.pos, id.name, nu, why))
		}
	}
	return errors.Join(errs...)
}

func (p *planned) report(w io.Writer, dryRun bool) {
	r := newRenamer(p.name, p.module)
	fmt.Fprintf(w, "name: %s → %s, %s → %s, %s → %s\n", templateName, r.name,
		strings.ToUpper(templateName), r.upper, strings.ToUpper(templateName[:1])+templateName[1:], r.title)
	if p.fromModule != p.module {
		fmt.Fprintf(w, "module: %s → %s\n", p.fromModule, p.module)
	} else {
		fmt.Fprintf(w, "module: %s (kept; occurrences of %s become it)\n", p.module, templateModule)
	}
	width := 0
	for _, c := range p.changes {
		width = max(width, len(c.path))
	}
	for _, c := range p.changes {
		mode := ""
		if c.newMode != c.mode {
			mode = fmt.Sprintf(" (mode %#o → %#o)", c.mode, c.newMode)
		}
		fmt.Fprintf(w, "  %-*s  %s%s\n", width, c.path, c.counts, mode)
	}
	if p.skippedSelf {
		fmt.Fprintf(w, "kept: %s/ (it names the template it renames from)\n", selfDir)
	}
	for _, k := range p.kept {
		fmt.Fprintf(w, "kept: %s:%d-%d (between %s and %s)\n", k.path, k.from, k.to, keepBegin, keepEnd)
	}
	if len(p.binaries) > 0 {
		fmt.Fprintf(w, "not renamed, binary: %s (rebuild them)\n", strings.Join(p.binaries, ", "))
	}
	verb := "changed"
	if dryRun {
		verb = "would change"
	}
	switch {
	case len(p.changes) > 0:
		fmt.Fprintf(w, "%s %d files: %s\n", verb, len(p.changes), p.total)
	case p.templateNameFound:
		fmt.Fprintf(w, "nothing to change: %s is left only where it is kept\n", templateName)
	default:
		fmt.Fprintf(w, "nothing to change: renamed already\n")
	}
}

// apply writes the planned changes.
func (p *planned) apply() error {
	for _, c := range p.changes {
		if c.data != nil {
			if err := os.WriteFile(c.abs, c.data, c.mode); err != nil {
				return err
			}
		}
		if c.newMode != c.mode {
			if err := os.Chmod(c.abs, c.newMode); err != nil {
				return err
			}
		}
	}
	return nil
}
