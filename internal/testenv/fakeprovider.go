package testenv

import (
	"net/http/httptest"
	"testing"

	"github.com/resiliencekit/payservice/internal/fakeprovider"
)

// NewFakeProvider serves a fresh fake payment provider on loopback for this
// test, and returns it with its base URL. The test drives its faults and
// reads its ledger through the returned value.
func NewFakeProvider(t testing.TB, opts ...fakeprovider.Option) (*fakeprovider.Provider, string) {
	t.Helper()
	fake := fakeprovider.New(opts...)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv.URL
}
