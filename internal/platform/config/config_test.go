package config

import (
	"bytes"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// settings is a component's settings, as the tests bind them.
type settings struct {
	Addr     string
	URL      string
	Timeout  time.Duration
	Drain    time.Duration
	Workers  int
	Ratio    float64
	Enabled  bool
	Format   string
	Level    slog.Level
	Optional string
}

func defaults() settings {
	return settings{Addr: ":8080", Timeout: 90 * time.Second, Workers: 32, Ratio: 0.5, Enabled: true, Format: "json", Level: slog.LevelInfo}
}

func (s *settings) bind(b *Binder) {
	b.String("ADDR", &s.Addr, "listen address")
	b.URL("DATABASE_URL", &s.URL, []string{"postgres"}, "database URL").Required()
	dep := b.Prefix("DEP_")
	dep.Duration("TIMEOUT", &s.Timeout, "one call's timeout").Replaces("OLD_TIMEOUT")
	dep.Int("WORKERS", &s.Workers, 1, 100, "calls at once")
	dep.Float("RATIO", &s.Ratio, 0.01, 1, "failure ratio")
	b.DurationOrZero("DRAIN", &s.Drain, "drain delay")
	b.Bool("ENABLED", &s.Enabled, "on or off")
	b.OneOf("FORMAT", &s.Format, []string{"json", "text"}, "json or text")
	b.LogLevel("LEVEL", &s.Level, "log level")
	b.String("OPTIONAL", &s.Optional, "may stay unset")
	b.Renamed("OLDER_WORKERS", "DEP_WORKERS")
}

func load(env map[string]string, names ...string) (settings, []string, error) {
	s := defaults()
	warnings, err := Load(func(k string) string { return env[k] }, s.bind, names...)
	return s, warnings, err
}

var minimal = map[string]string{"DATABASE_URL": "postgres://app:s3cret@db:5432/app"}

func with(overrides map[string]string) map[string]string {
	env := map[string]string{}
	for k, v := range minimal {
		env[k] = v
	}
	for k, v := range overrides {
		env[k] = v
	}
	return env
}

func TestLoad_UnsetVariablesKeepTheBoundDefaults(t *testing.T) {
	got, warnings, err := load(minimal)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Load: %v, warnings %v", err, warnings)
	}
	want := defaults()
	want.URL = minimal["DATABASE_URL"]
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestLoad_ParsesEachType(t *testing.T) {
	got, _, err := load(with(map[string]string{
		"ADDR": " :9000 ", "DEP_TIMEOUT": "250ms", "DEP_WORKERS": "7", "DEP_RATIO": "0.25",
		"DRAIN": "0s", "ENABLED": "false", "FORMAT": "TEXT", "LEVEL": "debug", "OPTIONAL": "x",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := settings{Addr: ":9000", URL: minimal["DATABASE_URL"], Timeout: 250 * time.Millisecond, Workers: 7, Ratio: 0.25,
		Format: "text", Level: slog.LevelDebug, Optional: "x"}
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestLoad_RejectsBadValuesNamingTheVariable(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"missing required", map[string]string{"DATABASE_URL": ""}, "DATABASE_URL is required: database URL"},
		{"wrong scheme, hidden", map[string]string{"DATABASE_URL": "mysql://u:pw@h/d"}, "DATABASE_URL=(hidden): scheme must be postgres; expected database URL"},
		{"no host", map[string]string{"DATABASE_URL": "postgres://"}, "DATABASE_URL=(hidden): no host"},
		{"bad duration", map[string]string{"DEP_TIMEOUT": "soon"}, "DEP_TIMEOUT=soon: not a duration"},
		{"zero duration", map[string]string{"DEP_TIMEOUT": "0s"}, "DEP_TIMEOUT=0s: must be greater than zero"},
		{"negative duration", map[string]string{"DRAIN": "-1s"}, "DRAIN=-1s: negative"},
		{"bad int", map[string]string{"DEP_WORKERS": "many"}, "DEP_WORKERS=many: not an integer"},
		{"int out of range", map[string]string{"DEP_WORKERS": "0"}, "DEP_WORKERS=0: out of range [1, 100]"},
		{"float out of range", map[string]string{"DEP_RATIO": "1.5"}, "DEP_RATIO=1.5: out of range [0.01, 1]"},
		{"NaN", map[string]string{"DEP_RATIO": "NaN"}, "DEP_RATIO=NaN: not a number"},
		{"bad bool", map[string]string{"ENABLED": "maybe"}, "ENABLED=maybe: not a boolean"},
		{"bad enum", map[string]string{"FORMAT": "xml"}, "FORMAT=xml: not one of json, text"},
		{"bad level", map[string]string{"LEVEL": "loud"}, "LEVEL=loud: not one of debug, info, warn, error"},
		{"bad value under its old name", map[string]string{"OLD_TIMEOUT": "soon"}, "OLD_TIMEOUT=soon: not a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(with(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v\nwant it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoad_ReportsEveryProblemOnItsOwnLine(t *testing.T) {
	_, _, err := load(map[string]string{"DEP_WORKERS": "0"})
	if err == nil {
		t.Fatal("Load succeeded")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "DATABASE_URL is required") || !strings.HasPrefix(lines[1], "DEP_WORKERS=0") {
		t.Fatalf("want one line for DATABASE_URL and one for DEP_WORKERS, got:\n%s", err)
	}
}

// Found by FuzzLoad: a value with a newline in it must not spill onto a
// line of its own, where it would read as another problem.
func TestLoad_QuotesAValueWithControlCharacters(t *testing.T) {
	_, _, err := load(map[string]string{"DATABASE_URL": "postgres://db/app", "DEP_TIMEOUT": "0\n0"})
	if err == nil {
		t.Fatal("Load succeeded")
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], `DEP_TIMEOUT="0\n0": `) {
		t.Fatalf("want one line naming DEP_TIMEOUT with its value quoted, got:\n%s", err)
	}
}

func TestLoad_AReplacedNameStillWorksAndIsReportedAsDeprecated(t *testing.T) {
	got, warnings, err := load(with(map[string]string{"OLD_TIMEOUT": "3s"}))
	if err != nil || got.Timeout != 3*time.Second {
		t.Fatalf("old name: timeout %s, %v; want 3s", got.Timeout, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "OLD_TIMEOUT is deprecated") || !strings.Contains(warnings[0], "DEP_TIMEOUT") {
		t.Errorf("warnings %q, want one naming OLD_TIMEOUT and its new name", warnings)
	}
	if got, warnings, _ := load(with(map[string]string{"OLDER_WORKERS": "9"})); got.Workers != 9 || len(warnings) != 1 {
		t.Errorf("a name declared Renamed by the service: workers %d, warnings %q; want 9 and a warning", got.Workers, warnings)
	}
	// The new name wins, silently.
	got, warnings, err = load(with(map[string]string{"OLD_TIMEOUT": "3s", "DEP_TIMEOUT": "4s"}))
	if err != nil || got.Timeout != 4*time.Second || len(warnings) != 0 {
		t.Errorf("both names: timeout %s, warnings %q, %v; want 4s, none", got.Timeout, warnings, err)
	}
}

func TestLoad_WithNamesReadsOnlyThose(t *testing.T) {
	got, _, err := load(map[string]string{"ADDR": ":1", "DEP_WORKERS": "0"}, "ADDR")
	if err != nil || got.Addr != ":1" {
		t.Fatalf("Load(ADDR) = %+v, %v; want only ADDR read (the missing DATABASE_URL and bad DEP_WORKERS ignored)", got, err)
	}
}

func TestValues_MaskSecrets(t *testing.T) {
	s := defaults()
	s.URL = "postgres://app:s3cret@db:5432/app?sslmode=disable&password=again"
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", Values(s.bind))
	logged := buf.String()
	if strings.Contains(logged, "s3cret") || strings.Contains(logged, "again") {
		t.Errorf("a secret was logged: %s", logged)
	}
	if !strings.Contains(logged, "DEP_TIMEOUT=1m30s") || !strings.Contains(logged, "db:5432") {
		t.Errorf("the log lacks the values: %s", logged)
	}
}

func TestUsage_ListsEachVariableOnItsOwnRow(t *testing.T) {
	s := defaults()
	var buf bytes.Buffer
	Usage(&buf, s.bind)
	// Each variable's own row, split into its columns: tabwriter pads them
	// with at least two spaces, and no name or default has two in a row.
	columns := regexp.MustCompile(` {2,}`)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if got := columns.Split(lines[0], -1); !slices.Equal(got, []string{"VARIABLE", "DEFAULT", "MEANING"}) {
		t.Errorf("header %q", lines[0])
	}
	rows := map[string][]string{}
	for _, line := range lines[1:] {
		f := columns.Split(line, 3)
		rows[f[0]] = f[1:]
	}
	want := map[string][]string{
		"ADDR":         {":8080", "listen address"},
		"DATABASE_URL": {"(required)", "database URL"},
		"DEP_TIMEOUT":  {"1m30s", "one call's timeout (formerly OLD_TIMEOUT)"},
		"DEP_WORKERS":  {"32", "calls at once (formerly OLDER_WORKERS)"},
		"DEP_RATIO":    {"0.5", "failure ratio"},
		"DRAIN":        {"0s", "drain delay"},
		"ENABLED":      {"true", "on or off"},
		"FORMAT":       {"json", "json or text"},
		"LEVEL":        {"info", "log level"},
		"OPTIONAL":     {"(unset)", "may stay unset"},
	}
	if len(rows) != len(want) {
		t.Errorf("%d rows, want %d:\n%s", len(rows), len(want), buf.String())
	}
	for name, w := range want {
		if !slices.Equal(rows[name], w) {
			t.Errorf("%s: %q, want %q", name, rows[name], w)
		}
	}
}

func TestRenamed_PanicsOnAnUnknownName(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Renamed of a name nothing bound did not panic")
		}
	}()
	Usage(new(bytes.Buffer), func(b *Binder) { b.Renamed("OLD", "NOPE") })
}

func TestFormatDuration_DropsZeroUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Minute: "1m", 24 * time.Hour: "24h", 90 * time.Minute: "1h30m", 90 * time.Second: "1m30s",
		250 * time.Millisecond: "250ms", 0: "0s", 2*time.Hour + 30*time.Second: "2h0m30s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

// A host list, as libpq's URLs allow for failover, IPv6 literals included:
// accepted, and masked with its hosts kept; a list with a bad host is not.
func TestURL_AcceptsAHostList(t *testing.T) {
	tests := []struct {
		url, wantErr string
	}{
		{"postgres://app:s3cret@pg-a:5432,pg-b:5433/app?target_session_attrs=read-write", ""},
		{"postgres://app:s3cret@[::1]:5432,[2001:db8::2]:5433/app?target_session_attrs=read-write", ""},
		{"postgres://app:s3cret@[::1],[::2]/app", ""},
		{"postgres://app:s3cret@[::1]:5432,/app", "DATABASE_URL=(hidden): not a valid URL"},
		{"postgres://app:s3cret@[::1]:5432,[::2/app", "DATABASE_URL=(hidden): not a valid URL"},
		{"redis://app:s3cret@[::1]:5432,[::2]:5433/app", "DATABASE_URL=(hidden): not a valid URL"}, // only libpq lists hosts
	}
	for _, tt := range tests {
		got, _, err := load(map[string]string{"DATABASE_URL": tt.url})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: err = %v, want %q", tt.url, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.URL != tt.url {
			t.Errorf("%s: URL = %q, %v; want it accepted as is", tt.url, got.URL, err)
			continue
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", Values(got.bind))
		hosts := tt.url[strings.Index(tt.url, "@")+1 : strings.LastIndex(tt.url, "/app")]
		if logged := buf.String(); strings.Contains(logged, "s3cret") || !strings.Contains(logged, hosts) {
			t.Errorf("%s: logged %s; want the password masked and the hosts %s kept", tt.url, logged, hosts)
		}
	}
}
