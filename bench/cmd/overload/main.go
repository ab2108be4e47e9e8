// Command overload shows what payservice's protections buy when its payment
// provider is overloaded.
//
// It runs an in-process fake provider that works on at most -capacity
// charges at once, -hold each (8 × 100ms: 80 charges a second), with the
// excess waiting in an unbounded line, as a saturated dependency's backlog
// does. Then, for each mode, it starts the real server binary on a fresh
// database and offers it an open-loop load of -load times that capacity for
// -duration: requests go out on a fixed schedule whether or not earlier ones
// have been answered, as independent clients send them, each with its own
// Idempotency-Key. Latency is measured from each request's scheduled time.
//
// The two modes are the same binary with different configuration, not a
// special build:
//
//	protected    the defaults, with PROVIDER_BULKHEAD_CONCURRENCY=-capacity and
//	             PROVIDER_BULKHEAD_QUEUE=-capacity: the bulkhead sized to the provider
//	unprotected  every provider protection set out of reach: PROVIDER_BULKHEAD_CONCURRENCY
//	             10000, PROVIDER_BULKHEAD_QUEUE 100000, PROVIDER_BREAKER_MIN_REQUESTS 100000,
//	             PROVIDER_RETRY_BUDGET_RATIO 10, PROVIDER_RETRY_BUDGET_CAPACITY 100000,
//	             PROVIDER_RATE_LIMIT and _BURST 100000
//
// Both raise the inbound rate limit out of the way (it is not what is
// measured), set SHUTDOWN_DRAIN_DELAY=0s, and keep the default timeouts
// (REQUEST_TIMEOUT 10s, PROVIDER_TIMEOUT 3s; the client waits 12s).
//
// Reading the table, one row per mode: goodput is payments charged (201)
// per second of load, at most the provider's capacity. 202 means the outcome
// is unknown (the provider was asked but did not answer in time), 503 a
// refusal, "no answer" no HTTP response within 12s. Latencies are of 201s
// and of 503s. Then the provider's peak concurrency and backlog, the charges
// it made, and the requests it worked on after their caller had given up
// (wasted). Last, how long the server's requests waited in all for a
// Postgres connection: when that is large, the database, not the provider,
// was what limited the server, and latencies say more about it.
//
// Expect protected to hold goodput near capacity, accepted calls fast and
// refusals in milliseconds; and unprotected to let the provider's backlog
// grow until every call waits out its timeout: 202s, goodput collapsing,
// the provider as busy as ever on work nobody reads. -drop-abandoned shows
// that a provider which notices hang-ups does not save it: its line then
// settles at about the callers' timeout of work, so the requests reaching
// its front are the ones about to time out.
//
// Postgres and Redis come from DATABASE_URL (a user allowed to CREATE
// DATABASE; one database per mode is created and dropped) and REDIS_URL:
//
//	docker compose up -d postgres redis
//	cd bench && DATABASE_URL=postgres://payservice:payservice@localhost:5432/payservice?sslmode=disable \
//	  REDIS_URL=redis://localhost:6379/0 go run ./cmd/overload
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	_ "github.com/lib/pq"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
)

// requestTimeout is the server's default REQUEST_TIMEOUT, left unchanged.
const requestTimeout = 10 * time.Second

type options struct {
	server        string
	capacity      int
	hold          time.Duration
	load          float64
	duration      time.Duration
	modes         []string
	dropAbandoned bool
}

func main() {
	var o options
	flag.StringVar(&o.server, "server", "", "server binary to run; empty: build the service's ./cmd/server into a temporary directory")
	flag.IntVar(&o.capacity, "capacity", 8, "charges the fake provider works on at once (C)")
	flag.DurationVar(&o.hold, "hold", 100*time.Millisecond, "how long the fake provider works on each charge (L); capacity is C/L per second")
	flag.Float64Var(&o.load, "load", 3, "offered load, as a multiple of the provider's capacity")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the load is offered, per mode")
	modes := flag.String("modes", "protected,unprotected", "modes to run, in order: protected, unprotected")
	flag.BoolVar(&o.dropAbandoned, "drop-abandoned", false, "let the fake provider drop waiting requests whose caller hung up (most servers cannot)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: DATABASE_URL=... REDIS_URL=... overload [flags]\n\n"+
			"Runs payservice, protected and unprotected, against a slow capacity-limited\n"+
			"provider under open-loop overload and prints one row per mode.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.modes = strings.Split(*modes, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL"))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "overload:", err)
		os.Exit(1)
	}
}

// result is what one mode measured.
type result struct {
	mode                         string
	sent                         int
	byStatus                     map[int]int // status code, or 0 for no HTTP answer
	accepted, refused            []time.Duration
	maxLag                       time.Duration // how late the load generator sent a request
	peakBusy, peakQueued, wasted int
	charges                      int
	poolWait                     string // the server's total wait for a Postgres connection
}

func run(ctx context.Context, o options, adminURL, redisURL string) error {
	if adminURL == "" || redisURL == "" {
		return errors.New("DATABASE_URL and REDIS_URL must be set (docker compose up -d postgres redis)")
	}
	for _, m := range o.modes {
		if serverEnv(m, o.capacity) == nil {
			return fmt.Errorf("-modes: unknown mode %q", m)
		}
	}
	tmp, err := os.MkdirTemp("", "overload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.server == "" {
		// The service's module root, wherever bench/ is run from:
		// bench's go.mod replaces the service's module with it.
		root, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/resiliencekit/payservice").Output()
		if err != nil {
			return fmt.Errorf("find the service's source (run from bench/, or pass -server): %w", err)
		}
		o.server = filepath.Join(tmp, "server")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.server, "./cmd/server")
		build.Dir, build.Stderr = strings.TrimSpace(string(root)), os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build the server: %w", err)
		}
	}
	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer admin.Close()

	rate := o.load * float64(o.capacity) / o.hold.Seconds()
	fmt.Printf("provider capacity %d × %v = %.0f charges/s; offering %.0f payments/s for %v per mode\n\n",
		o.capacity, o.hold, float64(o.capacity)/o.hold.Seconds(), rate, o.duration)
	var results []result
	for _, m := range o.modes {
		r, err := runMode(ctx, o, m, rate, admin, adminURL, redisURL, tmp)
		if err != nil {
			return fmt.Errorf("%s: %w", m, err)
		}
		results = append(results, r)
	}
	printTable(os.Stdout, results, o.duration)
	return nil
}

// serverEnv is the configuration of a mode, or nil for an unknown mode.
func serverEnv(mode string, capacity int) []string {
	switch mode {
	case "protected":
		return []string{fmt.Sprintf("PROVIDER_BULKHEAD_CONCURRENCY=%d", capacity), fmt.Sprintf("PROVIDER_BULKHEAD_QUEUE=%d", capacity)}
	case "unprotected":
		return []string{"PROVIDER_BULKHEAD_CONCURRENCY=10000", "PROVIDER_BULKHEAD_QUEUE=100000", "PROVIDER_BREAKER_MIN_REQUESTS=100000",
			"PROVIDER_RETRY_BUDGET_RATIO=10", "PROVIDER_RETRY_BUDGET_CAPACITY=100000",
			"PROVIDER_RATE_LIMIT=100000", "PROVIDER_RATE_BURST=100000"}
	}
	return nil
}

func runMode(ctx context.Context, o options, mode string, rate float64, admin *sql.DB, adminURL, redisURL, tmp string) (result, error) {
	fake := fakeprovider.New()
	slow := newSlowProvider(fake, o.capacity, o.hold, o.dropAbandoned)
	providerLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	providerSrv := &http.Server{Handler: slow}
	go func() { _ = providerSrv.Serve(providerLn) }() // ends at Shutdown below
	defer func() {
		slow.Close()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if providerSrv.Shutdown(shutdownCtx) != nil {
			providerSrv.Close()
		}
	}()

	dbName := fmt.Sprintf("overload_%s_%d", mode, time.Now().UnixNano())
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+dbName); err != nil {
		return result{}, fmt.Errorf("create database: %w", err)
	}
	defer func() { _, _ = admin.Exec("DROP DATABASE " + dbName + " WITH (FORCE)") }()
	dbURL, err := url.Parse(adminURL)
	if err != nil {
		return result{}, fmt.Errorf("DATABASE_URL: %w", err)
	}
	dbURL.Path = "/" + dbName

	apiKey := "k" + rand.Text()
	httpAddr, err := freeAddr()
	if err != nil {
		return result{}, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return result{}, err
	}
	env := append([]string{
		"HTTP_ADDR=" + httpAddr, "ADMIN_ADDR=" + adminAddr,
		"DATABASE_URL=" + dbURL.String(), "REDIS_URL=" + redisURL,
		"PROVIDER_URL=http://" + providerLn.Addr().String(), "API_KEYS=overload:" + apiKey,
		"RATE_LIMIT_PER_SECOND=100000", "RATE_LIMIT_BURST=100000", "SHUTDOWN_DRAIN_DELAY=0s",
	}, serverEnv(mode, o.capacity)...)
	logPath := filepath.Join(tmp, mode+".log")
	srv, err := startServer(ctx, o.server, env, logPath, "http://"+httpAddr+"/health/ready")
	if err != nil {
		return result{}, err
	}
	r := offerLoad(ctx, "http://"+httpAddr+"/v1/payments", apiKey, rate, o.duration)
	r.poolWait = poolWait("http://" + adminAddr + "/metrics")
	if err := srv.stop(); err != nil {
		return result{}, fmt.Errorf("stop the server: %w; its log ends:\n%s", err, logTail(logPath))
	}
	r.mode = mode
	r.peakBusy, r.peakQueued, r.wasted = slow.stats()
	r.charges = len(fake.Charges())
	return r, ctx.Err()
}

// poolWait reads from the server's metrics how long its requests waited in
// all for a Postgres connection: when that is large, the database, not the
// provider, is what limits the server.
func poolWait(metricsURL string) string {
	resp, err := http.Get(metricsURL)
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), `go_sql_wait_duration_seconds_total{db_name="primary"} `); ok {
			if secs, err := strconv.ParseFloat(v, 64); err == nil {
				return fmt.Sprintf("%.1fs", secs)
			}
		}
	}
	return "?"
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type server struct {
	cmd    *exec.Cmd
	exited chan error
	log    *os.File
}

// startServer starts the binary and waits until readyURL answers 200.
func startServer(ctx context.Context, bin string, env []string, logPath, readyURL string) (*server, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	s := &server{cmd: cmd, exited: make(chan error, 1), log: log}
	go func() { s.exited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	probe := &http.Client{Timeout: time.Second}
	for {
		if resp, err := probe.Get(readyURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case err := <-s.exited:
			log.Close()
			return nil, fmt.Errorf("server exited before ready (%w); its log ends:\n%s", err, logTail(logPath))
		case <-deadline:
			_ = s.stop()
			return nil, fmt.Errorf("server not ready after 60s; its log ends:\n%s", logTail(logPath))
		case <-ctx.Done():
			_ = s.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, as an orchestrator would, and waits for the exit;
// after 30s it kills the server.
func (s *server) stop() error {
	defer s.log.Close()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return fmt.Errorf("no exit 30s after SIGTERM; killed: %w", <-s.exited)
	}
}

// logTail returns the last lines of the server's log, which is removed
// with the temporary directory when the tool exits.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}

// offerLoad sends payments at rate per second for d, each on its own
// goroutine whatever became of the earlier ones, and waits for every answer.
func offerLoad(ctx context.Context, target, apiKey string, rate float64, d time.Duration) result {
	client := &http.Client{
		Timeout:   requestTimeout + 2*time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 10000, DisableCompression: true},
	}
	defer client.CloseIdleConnections()
	r := result{byStatus: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for at := start; at.Sub(start) < d && ctx.Err() == nil; at = at.Add(interval) {
		time.Sleep(time.Until(at))
		r.maxLag = max(r.maxLag, time.Since(at))
		r.sent++
		req, _ := http.NewRequest(http.MethodPost, target, strings.NewReader(`{"amount":1000,"currency":"usd"}`))
		req.Header.Set("Authorization", "Bearer "+apiKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", fmt.Sprintf("overload-%d-%d", start.UnixNano(), r.sent))
		wg.Go(func() {
			status := 0 // no HTTP answer
			if resp, err := client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			took := time.Since(at) // from the schedule, so a late send counts against the server
			mu.Lock()
			defer mu.Unlock()
			r.byStatus[status]++
			switch status {
			case http.StatusCreated:
				r.accepted = append(r.accepted, took)
			case http.StatusServiceUnavailable:
				r.refused = append(r.refused, took)
			}
		})
	}
	wg.Wait()
	return r
}

func printTable(w io.Writer, results []result, d time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\toffered/s\tgoodput/s\t201\t202\t503\tother\tno answer\tp50 201\tp99 201\tp50 503\tp99 503\tprovider busy/queued\tcharges\twasted\tdb pool wait\t")
	for _, r := range results {
		other := r.sent - r.byStatus[201] - r.byStatus[202] - r.byStatus[503] - r.byStatus[0]
		fmt.Fprintf(tw, "%s\t%.0f\t%.1f\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\t\n",
			r.mode, float64(r.sent)/d.Seconds(), float64(r.byStatus[201])/d.Seconds(),
			r.byStatus[201], r.byStatus[202], r.byStatus[503], other, r.byStatus[0],
			percentile(r.accepted, 0.50), percentile(r.accepted, 0.99), percentile(r.refused, 0.50), percentile(r.refused, 0.99),
			r.peakBusy, r.peakQueued, r.charges, r.wasted, r.poolWait)
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(w, "%s: load generator at most %v behind schedule\n", r.mode, r.maxLag.Round(time.Millisecond))
	}
}

// percentile returns the p-th percentile of ds (nearest rank), or "-".
func percentile(ds []time.Duration, p float64) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(ds))
	i := min(len(s)-1, int(p*float64(len(s))))
	return s[i].Round(time.Millisecond).String()
}
