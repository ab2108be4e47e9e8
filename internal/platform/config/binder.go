// Package config reads a service's configuration from environment
// variables, once, at start-up.
//
// Each component declares its own variables by binding them to the fields
// of its settings struct (a Bind method taking a *Binder); a service
// composes those, under prefixes, into one table. The field's value when it
// is bound is the variable's default, so a component's defaults live in the
// code that builds its settings. The same table drives parsing, validation,
// the `-h` listing and the masked start-up log, so the documentation cannot
// drift from the code. Load reports every bad or missing variable by name,
// with what was expected, instead of stopping at the first: an operator
// fixing a manifest wants the whole list. A renamed variable keeps its old
// name working, reported as deprecated. The trade-off is a small
// hand-written parser instead of a library; it has no dependencies.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// Binder collects variables. A service gets one from Load, Usage or
// Values; Prefix gives a component a view whose names it extends.
type Binder struct {
	prefix string
	vars   *[]*Var
}

// Var is one bound variable. Its methods refine the declaration.
type Var struct {
	name     string
	usage    string
	def      string // the default, as text; "" for none
	required bool
	old      []string // deprecated names, still read
	val      value
}

// Required makes the variable mandatory: it has no default.
func (v *Var) Required() *Var { v.required, v.def = true, ""; return v }

// Replaces declares names the variable had before (full names, prefix
// included): each is still read when the variable itself is unset, and
// reported as deprecated.
func (v *Var) Replaces(old ...string) *Var { v.old = append(v.old, old...); return v }

// value is flag.Value by another name: it parses text into a field and
// renders it back for the start-up log.
type value interface {
	Set(string) error
	String() string
}

// secret is implemented by values that must not be logged as they are.
type secret interface{ Masked() string }

// Renamed declares that the variable now named current (its full name) was
// named old: old is still read when current is unset, and reported as
// deprecated. It keeps a service's renames beside its wiring, out of the
// components' binders. It panics if nothing named current was bound: a
// typo here must not silently drop an operator's setting.
func (b *Binder) Renamed(old, current string) {
	for _, v := range *b.vars {
		if v.name == current {
			v.Replaces(old)
			return
		}
	}
	panic("config: Renamed(" + old + "): no variable " + current)
}

// Prefix returns a binder whose variables' names start with p, after the
// binder's own prefix.
func (b *Binder) Prefix(p string) *Binder { return &Binder{prefix: b.prefix + p, vars: b.vars} }

func (b *Binder) bind(name, usage string, val value) *Var {
	v := &Var{name: b.prefix + name, usage: usage, def: val.String(), val: val}
	*b.vars = append(*b.vars, v)
	return v
}

// String binds a string.
func (b *Binder) String(name string, p *string, usage string) *Var {
	return b.bind(name, usage, stringValue{p})
}

// Duration binds a duration that must be positive.
func (b *Binder) Duration(name string, p *time.Duration, usage string) *Var {
	return b.bind(name, usage, durationValue{p, false})
}

// DurationOrZero binds a duration that may be zero.
func (b *Binder) DurationOrZero(name string, p *time.Duration, usage string) *Var {
	return b.bind(name, usage, durationValue{p, true})
}

// Int binds an integer within [min, max].
func (b *Binder) Int(name string, p *int, min, max int, usage string) *Var {
	return b.bind(name, usage, intValue{p, min, max})
}

// Float binds a number within [min, max].
func (b *Binder) Float(name string, p *float64, min, max float64, usage string) *Var {
	return b.bind(name, usage, floatValue{p, min, max})
}

// Bool binds a boolean.
func (b *Binder) Bool(name string, p *bool, usage string) *Var {
	return b.bind(name, usage, boolValue{p})
}

// OneOf binds a string that must be one of allowed (case-insensitive).
func (b *Binder) OneOf(name string, p *string, allowed []string, usage string) *Var {
	return b.bind(name, usage, enumValue{p, allowed})
}

// URL binds a URL with one of the schemes. A URL may carry credentials:
// its password is masked in logs, and a bad one is not echoed in errors.
func (b *Binder) URL(name string, p *string, schemes []string, usage string) *Var {
	return b.bind(name, usage, urlValue{p, schemes})
}

// LogLevel binds a log level.
func (b *Binder) LogLevel(name string, p *slog.Level, usage string) *Var {
	return b.bind(name, usage, levelValue{p})
}

// Value binds a value of the component's own type (flag.Value's methods;
// add Masked() string to keep it out of logs and errors).
func (b *Binder) Value(name string, v interface {
	Set(string) error
	String() string
}, usage string) *Var {
	return b.bind(name, usage, v)
}

// collect runs bind on a fresh binder and returns the variables it bound.
func collect(bind func(*Binder)) []*Var {
	var vars []*Var
	bind(&Binder{vars: &vars})
	return vars
}

// Load reads the variables bind declares through getenv. Unset or empty
// variables keep their defaults. The error lists every problem, one per
// line; warnings name the deprecated variables that were read.
//
// With names, Load reads only those variables: `server healthcheck` needs
// HTTP_ADDR, not the API keys.
func Load(getenv func(string) string, bind func(*Binder), names ...string) (warnings []string, err error) {
	var errs []error
	for _, v := range collect(bind) {
		if len(names) > 0 && !slices.Contains(names, v.name) {
			continue
		}
		from, raw := v.name, strings.TrimSpace(getenv(v.name))
		for _, old := range v.old {
			if raw != "" {
				break
			}
			if raw = strings.TrimSpace(getenv(old)); raw != "" {
				from = old
				warnings = append(warnings, fmt.Sprintf("%s is deprecated: it was read, but set %s instead", old, v.name))
			}
		}
		if raw == "" {
			if v.required {
				errs = append(errs, fmt.Errorf("%s is required: %s", v.name, v.usage))
			}
			continue
		}
		if err := v.val.Set(raw); err != nil {
			// Never echo a secret back, even a malformed one: error
			// messages end up in logs.
			shown := raw
			if _, ok := v.val.(secret); ok {
				shown = "(hidden)"
			} else if strings.ContainsFunc(raw, unicode.IsControl) {
				// Quoted, so a newline in the value cannot pass for
				// the start of another problem: one per line.
				shown = strconv.Quote(raw)
			}
			errs = append(errs, fmt.Errorf("%s=%s: %w; expected %s", from, shown, err, v.usage))
		}
	}
	return warnings, errors.Join(errs...)
}

// Usage writes the table of variables, defaults and meanings.
func Usage(w io.Writer, bind func(*Binder)) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tMEANING")
	for _, v := range collect(bind) {
		def := v.def
		switch {
		case v.required:
			def = "(required)"
		case def == "":
			def = "(unset)"
		}
		usage := v.usage
		if len(v.old) > 0 {
			usage += " (formerly " + strings.Join(v.old, ", ") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.name, def, usage)
	}
	tw.Flush()
}

// Values returns the variables' current values, secrets masked, for the
// start-up log.
func Values(bind func(*Binder)) slog.Value {
	vars := collect(bind)
	attrs := make([]slog.Attr, 0, len(vars))
	for _, v := range vars {
		shown := v.val.String()
		if s, ok := v.val.(secret); ok {
			shown = s.Masked()
		}
		attrs = append(attrs, slog.String(v.name, shown))
	}
	return slog.GroupValue(attrs...)
}
