package bench

import "testing"

// BenchmarkOverhead runs every composition, serially and in parallel, in
// one run, so that their ratios are measured under the same noise:
// BenchmarkOverhead/<composition>/<mode>.
func BenchmarkOverhead(b *testing.B) {
	compositions, stop, err := Compositions()
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	for _, c := range compositions {
		b.Run(c.Name, func(b *testing.B) {
			for _, m := range Modes() {
				b.Run(m.Name, m.Bench(c.Call))
			}
		})
	}
}
