//go:build prometheus

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resiliencekit/payservice/internal/platform/testenv"
)

// promJob is the scrape job of the service in the test's Prometheus.
const promJob = "payservice"

// prometheusBinaries returns the paths of prometheus and promtool, or
// fails the test saying how to install them: a green run must mean that a
// real Prometheus ran the queries.
func prometheusBinaries(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	var missing []string
	paths := map[string]string{}
	for _, name := range []string{"prometheus", "promtool"} {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
		}
		paths[name] = p
	}
	if len(missing) > 0 {
		t.Fatalf("%s not found on PATH. This test runs a real Prometheus: install it with "+
			"`apt-get install prometheus` (Debian, Ubuntu), or put the prometheus and promtool "+
			"of a release (https://prometheus.io/download/) on PATH", strings.Join(missing, " and "))
	}
	return paths["prometheus"], paths["promtool"]
}

// promServer is a Prometheus child process scraping the service.
type promServer struct {
	url    string        // of its HTTP API
	output *lockedBuffer // what it logged, for failure messages
	exited chan struct{} // closed once the process has ended
}

// startPrometheus writes a configuration that scrapes target (host:port of
// the admin server) every second and evaluates rules every second, checks
// it with promtool, and starts Prometheus on a free loopback port. The
// process is killed when the test ends.
func startPrometheus(t *testing.T, target string, rules []byte) *promServer {
	t.Helper()
	prometheus, promtool := prometheusBinaries(t)
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yml")
	configFile := filepath.Join(dir, "prometheus.yml")
	// One-second scrapes and evaluations: a test of a minute sees each
	// series dozens of times, and each rule evaluated after the load ends.
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: %s
    static_configs:
      - targets: [%q]
`, rulesFile, promJob, target)
	for name, content := range map[string][]byte{rulesFile: rules, configFile: []byte(config)} {
		if err := os.WriteFile(name, content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(promtool, "check", "config", configFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config (the rules are observability.RulesYAML): %v\n%s\nconfiguration:\n%s", err, out, config)
	}

	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := &promServer{url: "http://" + addr, output: &lockedBuffer{}, exited: make(chan struct{})}
	cmd := exec.Command(prometheus,
		"--config.file="+configFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
	)
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", prometheus, err)
	}
	go func() {
		_ = cmd.Wait() // killed at the end of the test: its error says so
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("Prometheus's output:\n%s", p.output.String())
		}
	})
	return p
}

// waitScraped waits until Prometheus has scraped the service successfully
// after the time after, so that what the service showed until then is
// stored, and returns when that scrape was.
func (p *promServer) waitScraped(t *testing.T, after time.Time) time.Time {
	t.Helper()
	var scraped time.Time
	// timestamp() of a selector is its sample's, the scrape's, time.
	q := fmt.Sprintf(`timestamp(up{job=%q}) and up{job=%q} == 1`, promJob, promJob)
	p.waitFor(t, "a successful scrape of the service after "+after.Format("15:04:05.000"), func(ctx context.Context) error {
		var data struct {
			Result []struct {
				Value [2]any `json:"value"` // [time, "value"]
			} `json:"result"`
		}
		if err := p.get(ctx, "/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
			return err
		}
		result := data.Result
		if len(result) != 1 {
			return fmt.Errorf("%s: %d series, want 1", q, len(result))
		}
		s, _ := result[0].Value[1].(string)
		seconds, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%s: value %v: %w", q, result[0].Value[1], err)
		}
		scraped = time.UnixMilli(int64(seconds * 1000))
		if !scraped.After(after) {
			return fmt.Errorf("last successful scrape at %s", scraped.Format("15:04:05.000"))
		}
		return nil
	})
	return scraped
}

// waitEvaluated waits until every rule has been evaluated twice after the
// time after, so that rules built on other rules' series have seen them
// too, and returns the rules whose last evaluation failed, with why.
func (p *promServer) waitEvaluated(t *testing.T, after time.Time) []string {
	t.Helper()
	var failed []string
	p.waitFor(t, "every rule to be evaluated after the load", func(ctx context.Context) error {
		var rules struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Type           string    `json:"type"` // recording or alerting
					Name           string    `json:"name"`
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.get(ctx, "/api/v1/rules", nil, &rules); err != nil {
			return err
		}
		failed = nil
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if !r.LastEvaluation.After(after.Add(time.Second)) { // the evaluation interval
					return fmt.Errorf("group %s: %s rule %s last evaluated at %v", g.Name, r.Type, r.Name, r.LastEvaluation)
				}
				if r.Health == "err" {
					failed = append(failed, fmt.Sprintf("%s rule %s (group %s): its evaluation fails: %s", r.Type, r.Name, g.Name, r.LastError))
				}
			}
		}
		return nil
	})
	return failed
}

// window is a time range to run queries over, every step.
type window struct {
	start, end time.Time
	step       time.Duration
}

func (w window) params() url.Values {
	seconds := func(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64) }
	return url.Values{
		"start": {seconds(w.start)},
		"end":   {seconds(w.end)},
		"step":  {strconv.FormatFloat(w.step.Seconds(), 'f', -1, 64)},
	}
}

// queryRange runs expr at every step of w and says whether it returned
// any series.
func (p *promServer) queryRange(ctx context.Context, expr string, w window) (bool, error) {
	params := w.params()
	params.Set("query", expr)
	var data struct {
		Result []json.RawMessage `json:"result"` // one per series
	}
	if err := p.get(ctx, "/api/v1/query_range", params, &data); err != nil {
		return false, err
	}
	return len(data.Result) > 0, nil
}

// metricNames returns the names of the series scraped from the service
// within w.
func (p *promServer) metricNames(ctx context.Context, w window) ([]string, error) {
	params := w.params()
	params.Set("match[]", fmt.Sprintf(`{job=%q}`, promJob))
	var names []string
	err := p.get(ctx, "/api/v1/label/__name__/values", params, &names)
	return names, err
}

// get calls the HTTP API and decodes the data of its answer into data.
func (p *promServer) get(ctx context.Context, path string, params url.Values, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+path+"?"+params.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return fmt.Errorf("GET %s: %s: %w", path, resp.Status, err)
	}
	if answer.Status != "success" {
		return fmt.Errorf("%s: %s", answer.ErrorType, answer.Error)
	}
	if err := json.Unmarshal(answer.Data, data); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// waitFor polls check every 100ms until it returns nil, for at most 30s;
// it fails the test with check's last error, or at once with Prometheus's
// output if Prometheus exits.
func (p *promServer) waitFor(t *testing.T, what string, check func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("Prometheus exited while waiting for %s (last check: %v):\n%s", what, err, p.output.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus: timed out waiting for %s: %v", what, err)
		}
	}
}

// lockedBuffer is a bytes.Buffer a process writes to while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
