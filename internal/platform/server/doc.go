// Package server runs a service's HTTP servers and shuts them down
// gracefully: it builds servers whose every phase is bounded, serves the
// admin endpoints (metrics, pprof) on their own port, and owns the
// lifecycle from listening to a drained, bounded shutdown.
package server
