// Command server runs payservice.
//
//	server [serve]      run the HTTP API and the admin endpoints (default)
//	server migrate      apply the database migrations and exit
//	server healthcheck  probe the local /health/ready; exit 0 if ready
//
// Configuration comes from environment variables: `server -h` lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/resiliencekit/payservice/internal/app"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	// The first signal starts a graceful shutdown; a second one ends the
	// process at once, with the shell's code for death by that signal.
	// One channel receives both: restoring the default handling after the
	// first instead would leave a moment in which a second is ignored.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() { // lives as long as the process
		<-signals
		cancel()
		sig := <-signals
		fmt.Fprintf(os.Stderr, "server: second %v: exiting at once\n", sig)
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "server: %v\n", strings.ReplaceAll(err.Error(), "\n", "\nserver: "))
		os.Exit(1)
	}
}

// run is the whole program, callable from tests with a context, arguments,
// an environment and output streams of their choosing.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { usage(stdout) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; see server -h", fs.Args())
	}

	switch cmd {
	case "serve":
		return app.Serve(ctx, getenv, stdout, version)
	case "migrate":
		return app.Migrate(ctx, getenv, stdout)
	case "healthcheck":
		return app.Healthcheck(ctx, getenv)
	case "help":
		usage(stdout)
		return nil
	}
	return fmt.Errorf("unknown command %q; want serve, migrate or healthcheck (see server -h)", cmd)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `%s %s: %s.

Usage:
  server [serve]      run the HTTP API (HTTP_ADDR) and admin endpoints (ADMIN_ADDR)
  server migrate      apply database migrations and exit
  server healthcheck  probe http://127.0.0.1<HTTP_ADDR port>/health/ready; exit 0 if ready
  server -h           show this help

Environment:
`, app.Name, version, app.Description)
	app.Usage(w)
}
