package fakeprovider

import (
	"net/http/httptest"
	"testing"
)

// Start serves a fresh fake provider on loopback for the rest of the test,
// and returns it with its base URL. The test drives its faults and reads
// its ledger through the returned value.
func Start(t testing.TB, opts ...Option) (*Provider, string) {
	t.Helper()
	fake := New(opts...)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	return fake, srv.URL
}
