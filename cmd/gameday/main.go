// Command gameday runs a game day on one machine: it starts a Postgres
// primary with a synchronous streaming standby, Redis, the fake provider
// and two instances of the server, with a fault-injecting proxy
// (toxiproxy, embedded) in front of every dependency; drives an open-model
// load through them; and runs scenarios, each a hypothesis about one fault
// (the provider down, slow or failing; an overload; Postgres slow,
// resetting, lagging or failing over; Redis lost; an instance killed; a
// rolling restart). Where a pattern is the defence, the scenario runs a
// second time with that pattern neutralised through configuration, so the
// report shows what it buys.
//
// After each run it waits for the reconciler and audits the money: charges
// equal succeeded payments, refunds equal succeeded refunds, no key is
// charged twice, every 2xx answer is in Postgres, nothing is left
// processing. It writes report.md, a timeline plot per run and
// verdict.json, and exits 1 when a hypothesis or an invariant failed.
//
// Usage (from the repository's root, with Docker running):
//
//	go run ./cmd/gameday [-short] [-duration 45s] [-out gameday-report] [-run regexp]
//
// -short runs every scenario in about 5 minutes (CI); -duration sets each
// run's length otherwise. Images come from TEST_POSTGRES_IMAGE and
// TEST_REDIS_IMAGE, as for the integration tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"

	_ "github.com/lib/pq"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gameday:", err)
		os.Exit(1)
	}
}

// errFailed is returned when the game day ran but a judged check failed.
var errFailed = errors.New("a hypothesis or an invariant failed: see the report")

func run(ctx context.Context, args []string, stderr io.Writer) error {
	flags := flag.NewFlagSet(args[0], flag.ContinueOnError)
	flags.SetOutput(stderr)
	short := flags.Bool("short", false, "every scenario in about 5 minutes (for CI)")
	duration := flags.Duration("duration", 40*time.Second, "length of each run, without -short")
	out := flags.String("out", "gameday-report", "directory for report.md, the plots and verdict.json")
	only := flags.String("run", "", "run only the scenarios whose name matches this regular expression")
	if err := flags.Parse(args[1:]); err != nil {
		return err
	}
	filter, err := regexp.Compile(*only)
	if err != nil {
		return fmt.Errorf("-run: %w", err)
	}
	phases := Phases{Steady: *duration / 4, Fault: *duration * 2 / 5}
	phases.Recovery = *duration - phases.Steady - phases.Fault
	mode := "long"
	if *short {
		phases, mode = Phases{Steady: 2 * time.Second, Fault: 5 * time.Second, Recovery: 6 * time.Second}, "short"
	}
	if phases.Recovery < 2*time.Second {
		return fmt.Errorf("-duration %v is too short: each run needs at least 6s", *duration)
	}
	dir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	report := &Report{
		Started: time.Now().UTC(), Mode: mode, Command: strings.Join(append([]string{"go run ./cmd/gameday"}, args[1:]...), " "),
		Machine: fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version()),
	}
	slo, err := serviceSLO()
	if err != nil {
		return err
	}
	env, err := startEnv(ctx, filepath.Join(dir, "logs"), baseConfig, log)
	defer func() {
		if err := env.Close(); err != nil {
			log.Error("cleaning up", "err", err)
		}
	}()
	if err != nil {
		return err
	}
	report.Setup = env.Describe(phases)
	bg, stopBalancer := context.WithCancel(ctx)
	balanced := make(chan struct{})
	go func() { env.Balancer.run(bg); close(balanced) }()
	defer func() { stopBalancer(); <-balanced }()

	acked := newAcks()
	var aborted error
	for _, s := range scenarios(slo) {
		if !filter.MatchString(s.Name) {
			continue
		}
		variants := []bool{false}
		if s.Pattern != "" {
			variants = append(variants, true)
		}
		for _, neutralised := range variants {
			env.Capacity.Set(providerSlots, providerHold)
			r, err := runScenario(ctx, env, acked, s, phases, baseRate, neutralised, log)
			if err != nil {
				// The runs done so far are worth their report: write it,
				// saying why the game day stopped.
				aborted = err
				break
			}
			log.Info("run done", "scenario", r.Scenario, "variant", r.Variant, "passed", r.Passed)
			report.Runs = append(report.Runs, r)
		}
		if aborted != nil {
			break
		}
	}
	report.Took = time.Since(report.Started)
	report.Passed = aborted == nil
	if aborted != nil {
		report.Failures = append(report.Failures, "the game day stopped before its end: "+aborted.Error())
	}
	for _, r := range report.Runs {
		for _, c := range append(append([]Check(nil), r.Invariants...), judged(r)...) {
			if !c.OK {
				report.Passed = false
				report.Failures = append(report.Failures, fmt.Sprintf("%s (%s): %s: want %s, got %s", r.Scenario, r.Variant, c.Name, c.Want, c.Got))
			}
		}
	}
	if err := writeReport(dir, report); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "gameday: report in %s\n", filepath.Join(dir, "report.md"))
	switch {
	case aborted != nil:
		return aborted
	case !report.Passed:
		return errFailed
	}
	return nil
}

// judged are the checks of r that decide the verdict.
func judged(r *Run) []Check {
	if !r.Judged {
		return nil
	}
	return r.Checks
}
