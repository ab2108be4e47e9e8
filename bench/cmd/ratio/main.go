// Command ratio prints the overhead of payservice's protections next to
// failsafe-go's and a direct call, with their ratios, in one table.
//
// It runs the benchmarks of package bench (the same functions `go test
// -bench .` runs) with testing.Benchmark, interleaved: every composition
// and mode once per round, for -rounds rounds, reporting each one's median
// round. On a small, noisy machine the absolute numbers move from run to
// run; the ratios, measured side by side, are what to read:
//
//	x direct      how many times the cost of the bare call
//	x failsafe-go  payservice's cost over failsafe-go's in the same mode;
//	              below 1 means payservice is cheaper
//
// Each benchmark runs about -benchtime (default 1s) per round.
//
//	cd bench && go run ./cmd/ratio -rounds 5
package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"slices"
	"testing"
	"text/tabwriter"

	"github.com/resiliencekit/payservice/bench"
)

func main() {
	testing.Init() // registers -test.benchtime, read by testing.Benchmark
	rounds := flag.Int("rounds", 3, "rounds of every benchmark; the median round is reported")
	benchtime := flag.String("benchtime", "1s", "time (or Nx iterations) per benchmark per round")
	flag.Parse()
	if err := run(*rounds, *benchtime); err != nil {
		fmt.Fprintln(os.Stderr, "ratio:", err)
		os.Exit(1)
	}
}

type row struct {
	composition, mode string
	results           []testing.BenchmarkResult
}

func run(rounds int, benchtime string) error {
	if rounds < 1 {
		return fmt.Errorf("-rounds must be at least 1, got %d", rounds)
	}
	if err := flag.Set("test.benchtime", benchtime); err != nil {
		return fmt.Errorf("-benchtime %q: %w", benchtime, err)
	}
	compositions, stop, err := bench.Compositions()
	if err != nil {
		return err
	}
	defer stop()

	var rows []*row
	for _, m := range bench.Modes() {
		for _, c := range compositions {
			rows = append(rows, &row{composition: c.Name, mode: m.Name})
		}
	}
	for round := range rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", round+1, rounds)
		i := 0
		for _, m := range bench.Modes() {
			for _, c := range compositions {
				r := testing.Benchmark(m.Bench(c.Call))
				if r.N == 0 {
					return fmt.Errorf("%s/%s failed", c.Name, m.Name)
				}
				rows[i].results = append(rows[i].results, r)
				i++
			}
		}
	}

	median := func(r *row) testing.BenchmarkResult {
		s := slices.Clone(r.results)
		slices.SortFunc(s, func(a, b testing.BenchmarkResult) int { return cmp.Compare(a.NsPerOp(), b.NsPerOp()) })
		return s[len(s)/2]
	}
	nsPerOp := func(r testing.BenchmarkResult) float64 { return float64(r.T.Nanoseconds()) / float64(r.N) }
	find := func(composition, mode string) testing.BenchmarkResult {
		for _, r := range rows {
			if r.composition == composition && r.mode == mode {
				return median(r)
			}
		}
		panic("no benchmark " + composition + "/" + mode)
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "BenchmarkOverhead/\tns/op\tB/op\tallocs/op\tx direct\tx failsafe-go\n")
	for _, r := range rows {
		m := median(r)
		ns := nsPerOp(m)
		vsDirect, vsFailsafe := "-", "-"
		if r.composition != "direct" {
			vsDirect = fmt.Sprintf("%.0f", ns/nsPerOp(find("direct", r.mode)))
			vsFailsafe = fmt.Sprintf("%.2f", ns/nsPerOp(find("failsafe-go", r.mode)))
		}
		fmt.Fprintf(w, "%s/%s\t%.1f\t%d\t%d\t%s\t%s\n", r.composition, r.mode, ns,
			m.AllocedBytesPerOp(), m.AllocsPerOp(), vsDirect, vsFailsafe)
	}
	return w.Flush()
}
