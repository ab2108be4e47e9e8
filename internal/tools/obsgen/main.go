// Command obsgen writes the files generated from the observability
// package: the Prometheus rules (from observability/slos.yaml and the
// pattern alerts) and the Grafana dashboard. `make generate` runs it;
// a test in observability fails while a written file is stale.
//
//	go run ./internal/tools/obsgen [-root DIR]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/resiliencekit/payservice/observability"
)

func main() {
	root := flag.String("root", ".", "the repository's root")
	flag.Parse()
	if err := run(*root); err != nil {
		fmt.Fprintln(os.Stderr, "obsgen:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	files, err := observability.Generated()
	if err != nil {
		return err
	}
	for _, f := range files {
		path := filepath.Join(root, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, f.Content, 0o644); err != nil {
			return err
		}
		fmt.Println("wrote", f.Path)
	}
	return nil
}
