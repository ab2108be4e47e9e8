package tracing

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/otel/attribute"
)

// pairs is a list of key=value pairs, comma-separated, values
// percent-encoded: the format of OTEL_EXPORTER_OTLP_HEADERS and
// OTEL_RESOURCE_ATTRIBUTES. It is a config value (Set and String).
type pairs struct{ keys, values []string }

func (p *pairs) Set(s string) error {
	var next pairs
	for i, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue // a trailing comma
		}
		k, v, ok := strings.Cut(item, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return fmt.Errorf("item %d is not key=value", i+1)
		}
		v, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("the value of %s is not percent-encoded", k)
		}
		next.keys, next.values = append(next.keys, k), append(next.values, v)
	}
	*p = next
	return nil
}

func (p *pairs) String() string {
	items := make([]string, len(p.keys))
	for i, k := range p.keys {
		items[i] = k + "=" + url.PathEscape(p.values[i])
	}
	return strings.Join(items, ",")
}

// Headers are the headers sent with every export. They often carry a
// credential: logs show their names only.
type Headers struct{ pairs }

// Set parses s, refusing a name that cannot be a header's.
func (h *Headers) Set(s string) error {
	var p pairs
	if err := p.Set(s); err != nil {
		return err
	}
	for _, k := range p.keys {
		if strings.ContainsFunc(k, func(r rune) bool { return r > '~' || !isTokenChar(byte(r)) }) {
			return fmt.Errorf("%q is not a header name", k)
		}
	}
	h.pairs = p
	return nil
}

// Masked shows the names, not the values.
func (h *Headers) Masked() string {
	items := make([]string, len(h.keys))
	for i, k := range h.keys {
		items[i] = k + "=xxxxx"
	}
	return strings.Join(items, ",")
}

func (h *Headers) header() http.Header {
	hdr := make(http.Header, len(h.keys))
	for i, k := range h.keys {
		hdr.Set(k, h.values[i])
	}
	return hdr
}

// isTokenChar reports whether c may be in a header name (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	return c > ' ' && c < 0x7f && !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, rune(c))
}

// Attributes are resource attributes, all of them strings.
type Attributes struct{ pairs }

func (a *Attributes) attributes() []attribute.KeyValue {
	kvs := make([]attribute.KeyValue, len(a.keys))
	for i, k := range a.keys {
		kvs[i] = attribute.String(k, a.values[i])
	}
	return kvs
}
