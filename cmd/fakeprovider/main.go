// Command fakeprovider serves the fake payment provider of
// internal/payments/fakeprovider over HTTP, for docker compose, local runs and game
// days: point PROVIDER_URL at it and switch its faults with PUT /_faults.
//
// It is configured from the environment only (see -h) and logs one line
// per request, so a game day can line up what the provider did with what
// payservice saw. Its ledger lives in memory: restarting it forgets every
// charge and refund, which is itself a failure worth rehearsing. The
// endpoints are listed in the package documentation of
// internal/payments/fakeprovider.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeprovider: %v\n", err)
		os.Exit(1)
	}
}

// shutdownTimeout bounds the graceful part of shutdown. Handlers waiting out
// an injected latency would hold it for up to fakeprovider.MaxLatency; past
// this the connections are closed, which ends their waits.
const shutdownTimeout = 5 * time.Second

// envVar is one setting. bind declares them all, bound to the config's
// fields, and drives both reading them and -h, so the usage cannot drift
// from the code.
type envVar struct {
	name, def, usage string
	dst              *string
}

type config struct {
	addr      string
	logFormat string
}

func bind(c *config) []envVar {
	return []envVar{
		{"ADDR", ":8081", `address to listen on; port 0 picks a free port, logged as "listening"`, &c.addr},
		{"LOG_FORMAT", "json", "log format: json or text", &c.logFormat},
	}
}

func loadConfig(getenv func(string) string) config {
	var c config
	for _, v := range bind(&c) {
		*v.dst = cmp.Or(getenv(v.name), v.def)
	}
	return c
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: fakeprovider [-h]\n       fakeprovider healthcheck   (exit 0 if the local provider answers)\n\n"+
		"Serves a fake payment provider with an in-memory ledger and fault injection:\n"+
		"POST and GET /v1/charges and /v1/refunds; GET, PUT and DELETE /_faults.\n\n"+
		"Environment:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, v := range bind(new(config)) {
		fmt.Fprintf(tw, "  %s\t%s (default %q)\n", v.name, v.usage, v.def)
	}
	_ = tw.Flush() // w is a terminal or a test buffer; nothing to do if it fails
}

// run serves the fake provider until ctx ends, then shuts down gracefully.
// `fakeprovider healthcheck` instead asks a running one whether it answers,
// for a container HEALTHCHECK (distroless images have no curl).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheck(ctx, loadConfig(getenv).addr)
	}
	flags := flag.NewFlagSet("fakeprovider", flag.ContinueOnError)
	flags.SetOutput(io.Discard) // errors are returned, and printed once, by main
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return nil
		}
		printUsage(stderr)
		return fmt.Errorf("parse arguments: %w", err)
	}
	if flags.NArg() > 0 {
		printUsage(stderr)
		return fmt.Errorf("unexpected arguments %q: settings come from the environment", flags.Args())
	}

	cfg := loadConfig(getenv)
	logger, err := newLogger(stdout, cfg.logFormat)
	if err != nil {
		return err
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on ADDR %q: %w", cfg.addr, err)
	}
	logger.Info("listening", "addr", ln.Addr().String())

	fake := fakeprovider.New()
	srv := &http.Server{
		Handler:           accessLog(logger, fake),
		ReadHeaderTimeout: 5 * time.Second,  // a client that cannot send headers in 5s is stuck or hostile
		ReadTimeout:       10 * time.Second, // bodies are a few hundred bytes
		// Longer than the longest latency fault, or the server would cut the
		// answers the fake is deliberately delaying.
		WriteTimeout: fakeprovider.MaxLatency + 10*time.Second,
		IdleTimeout:  2 * time.Minute, // keep-alive for clients' pools, but not forever
		ErrorLog:     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Answers held by a latency fault go out at once on shutdown, rather
	// than hold it past shutdownTimeout.
	srv.RegisterOnShutdown(fake.StopDelaying)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}

	logger.Info("shutting down", "timeout", shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down within %v: %w", shutdownTimeout, errors.Join(err, srv.Close()))
	}
	return nil
}

// healthcheck asks the provider listening on addr for its faults, which it
// answers at once whatever they are.
func healthcheck(ctx context.Context, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("ADDR %q: %w", addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", port)+"/_faults", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s", req.URL, resp.Status)
	}
	return nil
}

func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	default:
		return nil, fmt.Errorf("LOG_FORMAT must be json or text, got %q", format)
	}
}

// accessLog logs one line per request. A status of 0 means nothing was
// written: the client went away while the provider was delaying its answer,
// so whatever was decided — possibly a charge or refund — stands unheard.
// A request that carries a trace context (a traced payservice sends one)
// has its trace_id logged, so the line and the caller's trace find each
// other.
func accessLog(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Duration("duration", time.Since(start)),
		}
		if id := fakeprovider.TraceID(r.Header); id != "" {
			attrs = append(attrs, slog.String("trace_id", id))
		}
		logger.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's own writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
