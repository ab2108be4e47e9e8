package web

import (
	"fmt"
	"strings"
)

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

// Set parses client_id:secret pairs, comma-separated: the value of a
// configuration variable (config.Binder.Value).
func (k *APIKeys) Set(s string) error {
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
	*k = keys
	return nil
}

// Masked is String: it never shows a secret.
func (k APIKeys) Masked() string { return k.String() }

// Secrets returns the secrets by client id, for NewAuthenticator.
func (k APIKeys) Secrets() map[string]string {
	m := make(map[string]string, len(k))
	for _, key := range k {
		m[key.ClientID] = key.Secret
	}
	return m
}
