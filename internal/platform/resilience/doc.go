// Package resilience holds the protections a service puts between itself
// and its dependencies and clients.
//
// Each pattern here is generic — it knows nothing about the domain — and
// takes its settings (and, where tests need control, its clock and
// randomness) as arguments. The domain's dependency clients and its API
// compose them.
package resilience
