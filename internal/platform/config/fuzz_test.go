package config

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
)

// Whatever the environment holds, Load either takes a variable's value,
// within the bounds it was declared with, or refuses it with an error that
// names it first (and keeps a URL, which may hold a password, to itself);
// an unset or blank variable keeps its default. The error lists the
// problems one per line.
func FuzzLoad_TakesValuesWithinTheirBoundsOrNamesTheVariable(f *testing.F) {
	f.Add("250ms", "7", minimal["DATABASE_URL"], "false", "TEXT")
	f.Add("0s", "0", "postgres://", "maybe", "xml")
	f.Add("soon", "many", "mysql://u:pw@h/d", " true ", "json")
	f.Add("-1s", "101", "postgres://app:s3cret@[::1]:5432,[::2/app", "1", "")
	f.Add("1h30m", "100", "postgres://app:s3cret@[::1]:5432,[2001:db8::2]:5433/app", "F", " Json ")
	f.Add("", "", "", "", "")
	f.Fuzz(func(t *testing.T, timeout, workers, dbURL, enabled, format string) {
		env := map[string]string{"DEP_TIMEOUT": timeout, "DEP_WORKERS": workers, "DATABASE_URL": dbURL, "ENABLED": enabled, "FORMAT": format}
		got, _, err := load(env)

		refused := map[string]string{} // the problem of each variable refused
		if err != nil {
			problems := err.(interface{ Unwrap() []error }).Unwrap()
			if lines := strings.Count(err.Error(), "\n") + 1; lines != len(problems) {
				t.Errorf("%d problems on %d lines:\n%s", len(problems), lines, err)
			}
			for _, p := range problems {
				name, _, _ := strings.Cut(p.Error(), "=")
				name, _, _ = strings.Cut(name, " is required")
				if _, ok := env[name]; !ok || refused[name] != "" {
					t.Fatalf("a problem that names no variable set, or one named twice: %q", p)
				}
				refused[name] = p.Error()
			}
		}

		def := defaults()
		for _, v := range []struct {
			name          string
			kept, inRange bool // the default kept; the value within its bounds
		}{
			{"DEP_TIMEOUT", got.Timeout == def.Timeout, got.Timeout > 0 && got.Timeout == parseDuration(timeout)},
			{"DEP_WORKERS", got.Workers == def.Workers, 1 <= got.Workers && got.Workers <= 100},
			{"DATABASE_URL", got.URL == def.URL, got.URL == strings.TrimSpace(dbURL) && hasPostgresHost(got.URL)},
			{"ENABLED", got.Enabled == def.Enabled, isBool(enabled, got.Enabled)},
			{"FORMAT", got.Format == def.Format, got.Format == strings.ToLower(strings.TrimSpace(format)) && (got.Format == "json" || got.Format == "text")},
		} {
			raw := strings.TrimSpace(env[v.name])
			problem, isRefused := refused[v.name]
			switch {
			case raw == "" && v.name == "DATABASE_URL":
				if !strings.HasPrefix(problem, "DATABASE_URL is required") {
					t.Errorf("DATABASE_URL unset: problem %q, want it required", problem)
				}
			case raw == "":
				if isRefused || !v.kept {
					t.Errorf("%s unset: problem %q, default kept %v; want no problem and the default", v.name, problem, v.kept)
				}
			case isRefused:
				shown := raw
				if v.name == "DATABASE_URL" {
					shown = "(hidden)"
				} else if strings.ContainsFunc(raw, unicode.IsControl) {
					shown = strconv.Quote(raw) // one problem per line
				}
				if !strings.HasPrefix(problem, v.name+"="+shown+": ") || !v.kept {
					t.Errorf("%s=%q refused as %q, default kept %v; want the problem to start %q and the default kept", v.name, raw, problem, v.kept, v.name+"="+shown+": ")
				}
			case !v.inRange:
				t.Errorf("%s=%q taken, but the value is out of its bounds: %+v", v.name, raw, got)
			}
		}
	})
}

// parseDuration is the duration s spells, or 0.
func parseDuration(s string) time.Duration {
	d, _ := time.ParseDuration(strings.TrimSpace(s))
	return d
}

// isBool reports whether s spells the boolean b, as strconv.ParseBool
// reads it.
func isBool(s string, b bool) bool {
	switch strings.TrimSpace(s) {
	case "1", "t", "T", "TRUE", "true", "True":
		return b
	case "0", "f", "F", "FALSE", "false", "False":
		return !b
	}
	return false
}

// hasPostgresHost reports whether u is a postgres:// URL with a host.
func hasPostgresHost(u string) bool {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok || !strings.EqualFold(scheme, "postgres") {
		return false
	}
	authority, _, _ := strings.Cut(rest, "/")
	authority, _, _ = strings.Cut(authority, "?")
	authority, _, _ = strings.Cut(authority, "#")
	return authority[strings.LastIndex(authority, "@")+1:] != ""
}
