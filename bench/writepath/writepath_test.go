package writepath

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/resiliencekit/payservice/internal/payments/fakeprovider"
	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

var (
	rounds   = flag.Int("rounds", 5, "measured rounds; each measures every phase on each server, and the median round is reported")
	duration = flag.Duration("duration", 5*time.Second, "length of one measurement: one phase on one server in one round")
	clients  = flag.Int("clients", 32, "concurrent closed-loop clients (above 96, its provider bulkhead's default concurrency + queue, the service sheds new payments)")
	warmup   = flag.Duration("warmup", time.Second, "warm-up of every phase on each server before the first round, not counted")
	server   = flag.String("server", "", "payservice server binary to run; empty: build the service's ./cmd/server")
	logLevel = flag.String("log-level", "warn", "the service's LOG_LEVEL; info adds its access log, a line per request")
	profile  = flag.String("service-cpuprofile", "", "write a CPU profile of the service during its first round of new payments to this file (go tool pprof it)")
)

// maxErrorRatio is the share of wrong answers in any one measurement above
// which the test fails: beyond it, the rates measure failures.
const maxErrorRatio = 0.03

// The goals for new payments, reported against the measurement.
const (
	goalThroughput = 0.85 // service/bare throughput, at least
	goalP50        = 1.3  // service/bare p50 latency, at most
)

// apiKey is the service's credential: API_KEYS=bench:bench_key.
const apiKey = "bench_key"

func TestMain(m *testing.M) { testenv.Main(m) }

func TestWritePath(t *testing.T) {
	if testing.Short() {
		t.Skip("a benchmark that takes minutes; run it without -short")
	}
	if *rounds < 1 || *clients < 1 || *duration <= 0 || *warmup < 0 {
		t.Fatalf("want -rounds ≥ 1, -clients ≥ 1, -duration > 0 and -warmup ≥ 0")
	}
	servers := 2
	need := time.Duration(*rounds*len(phases)*servers)*(*duration) + time.Duration(len(phases)*servers)*(*warmup) + 2*time.Minute
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < need {
		t.Fatalf("this run needs about %v, more than go test's -timeout leaves: pass -timeout %v", need.Round(time.Second), need.Round(time.Minute)+5*time.Minute)
	}
	ctx := t.Context()
	dir := t.TempDir()

	serverBin, bareBin, err := buildBinaries(ctx, dir, *server)
	if err != nil {
		t.Fatal(err)
	}
	serviceDB, bareDB, redisURL, source := storage(t)

	provider := fakeprovider.New()
	providerSrv := httptest.NewServer(provider)
	t.Cleanup(providerSrv.Close)

	bareAddr := freeAddr(t)
	bareProc, err := start(ctx, "bare", bareBin, []string{
		"DATABASE_URL=" + bareDB, "PROVIDER_URL=" + providerSrv.URL, "HTTP_ADDR=" + bareAddr,
	}, filepath.Join(dir, "bare.log"), "http://"+bareAddr+"/healthz")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bareProc.stop() })

	serviceAddr, adminAddr := freeAddr(t), freeAddr(t)
	serviceEnv := []string{
		"DATABASE_URL=" + serviceDB, "REDIS_URL=" + redisURL, "PROVIDER_URL=" + providerSrv.URL,
		"API_KEYS=bench:" + apiKey, "HTTP_ADDR=" + serviceAddr, "ADMIN_ADDR=" + adminAddr,
		"RATE_LIMIT_PER_SECOND=1e6", "RATE_LIMIT_BURST=1000000",
		// The provider's quota (default 100 calls/s, burst 20) would cap
		// new payments at 100/s: a contract with the provider, not a cost
		// of the write path.
		"PROVIDER_RATE_LIMIT=100000", "PROVIDER_RATE_BURST=100000",
		"SHUTDOWN_DRAIN_DELAY=0s", "LOG_LEVEL=" + *logLevel,
	}
	// The service's configuration is being reworked: a variable renamed
	// would be ignored without a word, and its default measured instead.
	if err := checkVariables(ctx, serverBin, serviceEnv); err != nil {
		t.Fatal(err)
	}
	serviceProc, err := start(ctx, "service", serverBin, serviceEnv, filepath.Join(dir, "service.log"), "http://"+serviceAddr+"/health/ready")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = serviceProc.stop() })

	targets := []*target{
		newTarget("bare", bareAddr, "", *clients, bareProc.cpuTime),
		newTarget("service", serviceAddr, "Bearer "+apiKey, *clients, serviceProc.cpuTime),
	}
	out := os.Stdout
	printHeader(out, source)

	run1 := strings.ToLower(rand.Text()[:8]) // keeps keys unique if Redis outlives the run
	newOK, newErrors := 0, 0
	count := func(ph phase, m measurement) {
		if ph == newPayments {
			newOK, newErrors = newOK+m.ok, newErrors+m.errorCount()
		}
	}
	if *warmup > 0 {
		for _, tg := range targets {
			for _, ph := range phases {
				m := run(ctx, tg, ph, *clients, *warmup, fmt.Sprintf("%s-%s-warmup", run1, tg.name))
				count(ph, m)
				if m.errorRatio() > maxErrorRatio {
					t.Fatalf("warm-up, %s %s: %.1f%% errors: %s", tg.name, ph, 100*m.errorRatio(), m.errorSummary())
				}
			}
		}
		fmt.Fprintf(out, "warm-up done: %v per phase and server\n", *warmup)
	}

	results := map[string][][]measurement{} // target → phase → round
	for _, tg := range targets {
		results[tg.name] = make([][]measurement, len(phases))
	}
	for r := range *rounds {
		for _, ph := range phases {
			for _, tg := range targets {
				var profiled <-chan error
				if *profile != "" && r == 0 && ph == newPayments && tg.name == "service" {
					profiled = cpuProfile(ctx, "http://"+adminAddr, *duration, *profile)
				}
				m := run(ctx, tg, ph, *clients, *duration, fmt.Sprintf("%s-%s-r%d", run1, tg.name, r))
				if profiled != nil {
					if err := <-profiled; err != nil {
						t.Fatal(err)
					}
					fmt.Fprintf(out, "CPU profile of the service's new payments: %s\n", *profile)
				}
				count(ph, m)
				results[tg.name][ph] = append(results[tg.name][ph], m)
				fmt.Fprintf(out, "round %d/%d  %-6s %-7s %7.0f/s  p50 %8s  p99 %8s  CPU %5.0fµs/answer  errors %d\n", r+1, *rounds, ph, tg.name,
					m.rate(), ms(m.percentile(0.50)), ms(m.percentile(0.99)), 1e6*m.cpuPerAnswer(), m.errorCount())
				if ctx.Err() != nil {
					t.Fatal(ctx.Err())
				}
			}
		}
	}
	fmt.Fprintln(out)
	printTable(out, results["bare"], results["service"])

	if load := loadAverage(); load != "" {
		fmt.Fprintf(out, "load average at the end: %s\n", load)
	}
	// Every new payment answered 201 is one charge, and a replay is none:
	// charges beyond the new payments' answers would be replays charging.
	charges := len(provider.Charges())
	fmt.Fprintf(out, "\nprovider: %d charges for %d new payments answered 201 (and %d that got another answer)\n", charges, newOK, newErrors)
	if charges < newOK || charges > newOK+newErrors {
		t.Errorf("the provider made %d charges for %d new payments (%d more got no 201): some payment was charged twice, or not at all", charges, newOK, newErrors)
	}
	for _, tg := range targets {
		for _, ph := range phases {
			for r, m := range results[tg.name][ph] {
				if m.errorRatio() > maxErrorRatio {
					t.Errorf("%s, %s, round %d: %.1f%% errors (more than %.0f%%): %s", tg.name, ph, r+1, 100*m.errorRatio(), 100*maxErrorRatio, m.errorSummary())
				}
			}
		}
	}

	for _, p := range []*process{bareProc, serviceProc} {
		if err := p.stop(); err != nil {
			t.Errorf("stop %s: %v; its log ends:\n%s", p.name, err, logTail(p.logPath))
		}
		if p.name == "bare" || !accessLog() {
			if b, _ := os.ReadFile(p.logPath); len(b) > 0 {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				fmt.Fprintf(out, "%s logged %d lines; the last:\n%s\n", p.name, len(lines), logTail(p.logPath))
			}
		}
	}
}

func printHeader(w io.Writer, source string) {
	fmt.Fprintf(w, "write path: payservice's server vs a bare chi + lib/pq handler (bench/bare), side by side\n")
	fmt.Fprintf(w, "%s %s/%s, GOMAXPROCS %d (the servers get the same default), %d CPUs, shared by the load generator,\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(w, "  the fake provider, both servers, Postgres and Redis (2 noisy cores where the README's numbers\n")
	fmt.Fprintf(w, "  come from): read the ratios, measured under the same noise, not the absolute numbers\n")
	if load := loadAverage(); load != "" {
		fmt.Fprintf(w, "load average at the start: %s (other work on the machine shows here)\n", load)
	}
	fmt.Fprintf(w, "%d rounds, each %v per phase and server (bare, then service), %d closed-loop clients, warm-up %v\n",
		*rounds, *duration, *clients, *warmup)
	fmt.Fprintf(w, "Postgres and Redis: %s; one fake provider in this process\n", source)
	logs := "no access log"
	if accessLog() {
		logs = "with its access log"
	}
	fmt.Fprintf(w, "service: LOG_LEVEL=%s (%s), inbound and provider rate limits out of reach, other settings default\n\n", *logLevel, logs)
}

// loadAverage returns the 1, 5 and 15 minute load averages, or "" where
// /proc/loadavg does not exist.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}

// accessLog reports whether the service writes its access log, which it
// does at level info.
func accessLog() bool { return *logLevel == "info" || *logLevel == "debug" }

// figure is one row of the table.
type figure struct {
	label string
	ph    phase
	value func(measurement) float64
	show  func(float64) string
	goal  func(ratio float64) string // "" when the issue sets none
}

func printTable(w io.Writer, bare, service [][]measurement) {
	rate := func(m measurement) float64 { return m.rate() }
	p50 := func(m measurement) float64 { return m.percentile(0.50).Seconds() }
	p99 := func(m measurement) float64 { return m.percentile(0.99).Seconds() }
	cpu := func(m measurement) float64 { return m.cpuPerAnswer() }
	perSecond := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	micros := func(v float64) string { return fmt.Sprintf("%.0fµs", v*1e6) }
	seconds := func(v float64) string { return ms(time.Duration(v * float64(time.Second))) }
	atLeast := func(goal float64) func(float64) string {
		return func(r float64) string { return fmt.Sprintf("≥ %.2f: %s", goal, met(r >= goal)) }
	}
	atMost := func(goal float64) func(float64) string {
		return func(r float64) string { return fmt.Sprintf("≤ %.2f: %s", goal, met(r <= goal)) }
	}
	figures := []figure{
		{"new payments/s", newPayments, rate, perSecond, atLeast(goalThroughput)},
		{"new p50", newPayments, p50, seconds, atMost(goalP50)},
		{"new p99", newPayments, p99, seconds, nil},
		{"new CPU/answer", newPayments, cpu, micros, nil},
		{"replays/s", replays, rate, perSecond, nil},
		{"replay p50", replays, p50, seconds, nil},
		{"replay p99", replays, p99, seconds, nil},
		{"replay CPU/answer", replays, cpu, micros, nil},
		{"GETs/s", gets, rate, perSecond, nil},
		{"GET p50", gets, p50, seconds, nil},
		{"GET p99", gets, p99, seconds, nil},
		{"GET CPU/answer", gets, cpu, micros, nil},
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "median of rounds\tbare\tservice\tservice/bare\trounds' ratios\tgoal")
	for _, f := range figures {
		b, s := values(bare[f.ph], f.value), values(service[f.ph], f.value)
		medB, medS := median(b), median(s)
		if medB == 0 && medS == 0 {
			continue // CPU times, where /proc cannot be read
		}
		ratio := medS / medB
		var ratios []float64
		for i := range min(len(b), len(s)) {
			ratios = append(ratios, s[i]/b[i])
		}
		goal := ""
		if f.goal != nil {
			goal = f.goal(ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2f\t%.2f–%.2f\t%s\n", f.label, f.show(medB), f.show(medS), ratio,
			slices.Min(ratios), slices.Max(ratios), goal)
	}
	for _, ph := range phases {
		fmt.Fprintf(tw, "%s errors, all rounds\t%s\t%s\t\t\t\n", ph, errorsOf(bare[ph]), errorsOf(service[ph]))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nEach figure is the median of its rounds; service/bare is the ratio of the medians, and the rounds'")
	fmt.Fprintln(w, "ratios are each round's own (service's measurement against the bare one just before it).")
	fmt.Fprintln(w, "CPU/answer is the server process's own CPU time (user + system) per correct answer: Postgres,")
	fmt.Fprintln(w, "Redis, the fake provider and the load generator are not in it, and it moves less with the")
	fmt.Fprintln(w, "machine's other load than the rates do.")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func values(ms []measurement, f func(measurement) float64) []float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	return v
}

// median of v; the mean of the middle two for an even count.
func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// errorsOf sums the wrong answers of the rounds, with the total sent.
func errorsOf(ms []measurement) string {
	bad, all := 0, 0
	for _, m := range ms {
		bad += m.errorCount()
		all += m.ok + m.errorCount()
	}
	return fmt.Sprintf("%d of %d", bad, all)
}

// ms formats a latency in milliseconds.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	if v < 10 {
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.1fms", v)
}
