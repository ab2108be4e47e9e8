package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The value types below parse one variable each. Their errors say what is
// wrong with the text; Load adds the variable's name and what was expected.

type stringValue struct{ p *string }

func (v stringValue) Set(s string) error { *v.p = s; return nil }
func (v stringValue) String() string     { return *v.p }

type intValue struct {
	p        *int
	min, max int
}

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("not an integer")
	}
	if n < v.min || n > v.max {
		return fmt.Errorf("out of range [%d, %d]", v.min, v.max)
	}
	*v.p = n
	return nil
}
func (v intValue) String() string { return strconv.Itoa(*v.p) }

type floatValue struct {
	p        *float64
	min, max float64
}

func (v floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return errors.New("not a number")
	}
	if f < v.min || f > v.max { // also false for NaN: refused below
		return fmt.Errorf("out of range [%g, %g]", v.min, v.max)
	}
	if f != f {
		return errors.New("not a number")
	}
	*v.p = f
	return nil
}
func (v floatValue) String() string { return strconv.FormatFloat(*v.p, 'g', -1, 64) }

type durationValue struct {
	p         *time.Duration
	allowZero bool
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration such as 500ms, 5s or 1m")
	}
	switch {
	case d < 0:
		return errors.New("negative")
	case d == 0 && !v.allowZero:
		return errors.New("must be greater than zero")
	}
	*v.p = d
	return nil
}
func (v durationValue) String() string { return FormatDuration(*v.p) }

// FormatDuration writes d as time.Duration does, without the zero units
// it pads with: 1m rather than 1m0s, 24h rather than 24h0m0s.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

type boolValue struct{ p *bool }

func (v boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not a boolean (true or false)")
	}
	*v.p = b
	return nil
}
func (v boolValue) String() string { return strconv.FormatBool(*v.p) }

type enumValue struct {
	p       *string
	allowed []string
}

func (v enumValue) Set(s string) error {
	s = strings.ToLower(s)
	if !slices.Contains(v.allowed, s) {
		return fmt.Errorf("not one of %s", strings.Join(v.allowed, ", "))
	}
	*v.p = s
	return nil
}
func (v enumValue) String() string { return *v.p }

type levelValue struct{ p *slog.Level }

func (v levelValue) Set(s string) error {
	// slog.Level's own parser also accepts offsets such as "info+2";
	// that is fine, but name the common values in the error.
	if err := v.p.UnmarshalText([]byte(s)); err != nil {
		return errors.New("not one of debug, info, warn, error")
	}
	return nil
}
func (v levelValue) String() string { return strings.ToLower(v.p.String()) }

// urlValue is a URL restricted to some schemes. Its password, if any, is
// masked in logs.
//
// Every URL is treated as a secret, the provider's too: any of them may carry
// credentials, and a bad one is not echoed in errors either.
type urlValue struct {
	p       *string
	schemes []string
}

func (v urlValue) Set(s string) error {
	u, err := parseURL(s)
	if err != nil {
		// url.Error repeats the whole URL, password included: say less.
		return errors.New("not a valid URL")
	}
	if !slices.Contains(v.schemes, u.Scheme) {
		return fmt.Errorf("scheme must be %s", strings.Join(v.schemes, " or "))
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	*v.p = s
	return nil
}
func (v urlValue) String() string { return *v.p }

// parseURL parses s as url.Parse does, and also a Postgres URL whose host
// is a list ("pg-a:5432,pg-b:5432", IPv6 literals in brackets included),
// which libpq's URLs allow for failover and net/url refuses once a bracket
// is in it; other schemes' clients could not parse such a URL. Each host must parse on its own; the URL returned has the whole
// list as its Host.
func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err == nil {
		return u, nil
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, err
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hosts := "", authority
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		userinfo, hosts = authority[:at+1], authority[at+1:]
	}
	if !strings.Contains(hosts, ",") || (scheme != "postgres" && scheme != "postgresql") {
		return nil, err // only libpq's URLs may list hosts
	}
	for _, h := range strings.Split(hosts, ",") {
		if one, herr := url.Parse(scheme + "://" + h); h == "" || herr != nil || one.Host != h {
			return nil, err
		}
	}
	u, err = url.Parse(scheme + "://" + userinfo + "host" + tail)
	if err != nil {
		return nil, err
	}
	u.Host = hosts
	return u, nil
}

// Masked shows the URL with its secrets replaced, or the empty string.
// A password may sit in the query as well as in the userinfo: lib/pq and
// go-redis both read ?password=.
func (v urlValue) Masked() string {
	if *v.p == "" {
		return ""
	}
	u, err := parseURL(*v.p)
	if err != nil {
		return "(hidden)"
	}
	q := u.Query()
	for name := range q {
		if lower := strings.ToLower(name); strings.Contains(lower, "pass") || strings.Contains(lower, "secret") || strings.Contains(lower, "token") {
			q.Set(name, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.Redacted()
}
