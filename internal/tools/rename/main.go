// Command rename turns a copy of the payservice template into a service of
// its own name: run it once, at the root of the copy, as
//
//	make rename NAME=ledger [MODULE=example.com/acme/ledger]
//
// gonew (golang.org/x/tools/cmd/gonew) rewrites only Go import paths and
// the go.mod module line. Everything else keeps the template's name:
// container images, the metric namespace (payservice_…), Kubernetes
// names, labels and namespaces, compose names, the Postgres user and
// database of the dev configurations, Redis key prefixes, CI paths, the
// Makefile, the README and docs, and the string constants tests compare
// with (a test that names the module path in a string would even pass
// vacuously). A module zip also drops file modes, so scripts lose their
// run bit. This command does the rest, in every text file of the tree:
//
//   - the template's module path, github.com/resiliencekit/payservice,
//     becomes MODULE in every go.mod (nested modules too, with their
//     replace ../ directives), import and text. MODULE is required in a
//     clone, whose go.mod still names the template; in a gonew copy it
//     may be omitted (the go.mod path is kept, and the text occurrences
//     gonew left are rewritten to it) or given equal to go.mod's path.
//   - the name, in three spellings: payservice → NAME, PAYSERVICE →
//     upper case, any other capitalised spelling → NAME with a capital.
//     NAME is a single lowercase word, so it is valid everywhere the
//     template's name is: DNS labels, image names, metric prefixes, Go
//     identifiers. A Go identifier that would collide with one already in
//     its package, a keyword or a predeclared name stops the run instead.
//   - an advisory lock key documented as the FNV-1a hash of a string that
//     holds the name is recomputed for the new string, so that two
//     services made from the template can share a database without
//     contending for each other's locks.
//   - files that start with #! get their run bit back.
//
// It keeps, verbatim, lines between rename:keep-begin and rename:keep-end
// (e.g. a README section that credits the template), and this directory,
// which names the template it renames from. Binary files, symlinks and
// .git are not touched. Running it again changes nothing.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rename", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.name, "name", "", "the service's `NAME` (make's NAME): "+nameRule)
	fs.StringVar(&o.module, "module", "", "the Go module path (make's MODULE), e.g. example.com/acme/ledger;\nrequired while go.mod still says "+templateModule)
	fs.StringVar(&o.dir, "dir", ".", "the root of the copy to rename")
	fs.BoolVar(&o.dryRun, "n", false, "print what would change, change nothing")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rename -name NAME [-module MODULE] [-dir DIR] [-n]\n"+
			"   or: make rename NAME=ledger [MODULE=example.com/acme/ledger]\n\n"+
			"Renames the template %s to NAME in every text file of DIR, and its\n"+
			"module path to MODULE, where gonew does not: images, metrics, Kubernetes,\n"+
			"compose, Postgres dev users, docs. Restores the run bit of scripts.\n\n", templateName)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "rename: unexpected argument %q: NAME and MODULE are flags (-name, -module)\n", fs.Arg(0))
		return 2
	}
	p, err := plan(o)
	if err != nil {
		fmt.Fprintf(stderr, "rename: %v\n", err)
		return 1
	}
	p.report(stdout, o.dryRun)
	if o.dryRun {
		return 0
	}
	if err := p.apply(); err != nil {
		fmt.Fprintf(stderr, "rename: %v\n", err)
		return 1
	}
	return 0
}
