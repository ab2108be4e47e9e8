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

func str(p *string) value                { return stringValue{p} }
func (v stringValue) Set(s string) error { *v.p = s; return nil }
func (v stringValue) String() string     { return *v.p }

type intValue struct {
	p        *int
	min, max int
}

func intRange(p *int, min, max int) value { return intValue{p, min, max} }

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

func floatRange(p *float64, min, max float64) value { return floatValue{p, min, max} }

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

func positiveDuration(p *time.Duration) value    { return durationValue{p, false} }
func nonNegativeDuration(p *time.Duration) value { return durationValue{p, true} }

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
func (v durationValue) String() string { return v.p.String() }

type boolValue struct{ p *bool }

func boolean(p *bool) value { return boolValue{p} }

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

func oneOf(p *string, allowed ...string) value { return enumValue{p, allowed} }

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

func logLevel(p *slog.Level) value { return levelValue{p} }

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

func dsn(p *string) value      { return urlValue{p, []string{"postgres", "postgresql"}} }
func redisURL(p *string) value { return urlValue{p, []string{"redis", "rediss"}} }
func httpURL(p *string) value  { return urlValue{p, []string{"http", "https"}} }

func (v urlValue) Set(s string) error {
	u, err := url.Parse(s)
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

// Masked shows the URL with its secrets replaced, or the empty string.
// A password may sit in the query as well as in the userinfo: lib/pq and
// go-redis both read ?password=.
func (v urlValue) Masked() string {
	if *v.p == "" {
		return ""
	}
	u, err := url.Parse(*v.p)
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

// APIKey is one client's credential.
type APIKey struct {
	ClientID string
	Secret   string
}

// APIKeys are the configured client credentials.
type APIKeys []APIKey

// String lists the client ids only: this value is logged.
func (k APIKeys) String() string {
	ids := make([]string, len(k))
	for i, key := range k {
		ids[i] = key.ClientID + ":***"
	}
	return strings.Join(ids, ",")
}

type apiKeysValue struct{ p *APIKeys }

func apiKeys(p *APIKeys) value { return apiKeysValue{p} }

func (v apiKeysValue) Set(s string) error {
	var keys APIKeys
	clients := map[string]bool{}
	secrets := map[string]bool{}
	for i, pair := range strings.Split(s, ",") {
		id, secret, ok := strings.Cut(strings.TrimSpace(pair), ":")
		switch {
		case !ok || id == "" || secret == "":
			return fmt.Errorf("entry %d is not client_id:secret", i+1)
		case strings.ContainsFunc(id+secret, func(r rune) bool { return r <= ' ' || r > '~' }):
			return fmt.Errorf("entry %d holds spaces or non-printable characters", i+1)
		case clients[id]:
			return fmt.Errorf("client id %q appears twice", id)
		case secrets[secret]:
			// Two clients sharing a secret could not be told apart.
			return fmt.Errorf("entry %d reuses another client's secret", i+1)
		}
		clients[id], secrets[secret] = true, true
		keys = append(keys, APIKey{ClientID: id, Secret: secret})
	}
	*v.p = keys
	return nil
}
func (v apiKeysValue) String() string { return v.p.String() }
func (v apiKeysValue) Masked() string { return v.p.String() }
