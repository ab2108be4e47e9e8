// Command smoke checks a running payservice end to end through its public
// API, the way a client sees it: ready, charges, answers a retry with the
// first answer, reads back, declines, refuses strangers. `make smoke` runs it against
// the stack of `docker compose up`; so does CI, in .ci/compose-e2e.sh.
//
//	smoke [-url http://localhost:8080] [-api-key KEY] [-timeout 1m]
//
// Each step prints PASS or FAIL. Every step builds on the ones before it (a
// stack that is not ready fails everything after), so the first failure
// ends the run: the steps after it print SKIP, so the log shows what was
// never checked, and the exit status is 1.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "smoke: %v\n", err)
		os.Exit(1)
	}
}

// The defaults match docker-compose.yml.
const (
	defaultURL    = "http://localhost:8080"
	defaultAPIKey = "dev_key_do_not_use_in_production"
)

// run checks the service and returns an error if any step fails.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("smoke", flag.ContinueOnError)
	fs.SetOutput(stdout)
	baseURL := fs.String("url", cmp.Or(getenv("SMOKE_URL"), defaultURL), "base URL of the service (env SMOKE_URL)")
	apiKey := fs.String("api-key", cmp.Or(getenv("SMOKE_API_KEY"), defaultAPIKey), "API key to authenticate with (env SMOKE_API_KEY)")
	timeout := fs.Duration("timeout", time.Minute, "time allowed for every step, waiting for readiness included")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: smoke [flags]\n\nChecks a running payservice end to end.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; see smoke -h", fs.Args())
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := &checker{api: &client{baseURL: *baseURL, apiKey: *apiKey, http: http.DefaultClient}}
	steps := []struct {
		name  string
		check func(context.Context) error
	}{
		{"readiness", c.readiness},
		{"create payment", c.create},
		{"replay with the same Idempotency-Key", c.replay},
		{"get payment", c.get},
		{"list payments", c.list},
		{"refund part of the payment", c.refund},
		{"replay the refund", c.refundReplay},
		{"refund more than is left", c.overRefund},
		{"list refunds", c.listRefunds},
		{"declined payment", c.decline},
		{"unauthenticated request", c.unauthenticated},
	}
	for i, s := range steps {
		if err := s.check(ctx); err != nil {
			fmt.Fprintf(stdout, "FAIL %s: %v\n", s.name, err)
			for _, rest := range steps[i+1:] {
				fmt.Fprintf(stdout, "SKIP %s\n", rest.name)
			}
			return fmt.Errorf("%q failed against %s (%d of %d steps passed)", s.name, *baseURL, i, len(steps))
		}
		fmt.Fprintf(stdout, "PASS %s\n", s.name)
	}
	fmt.Fprintf(stdout, "ok: %d steps passed against %s\n", len(steps), *baseURL)
	return nil
}
