// Package platform is the part of payservice that is not about payments:
// configuration, lifecycle, health, HTTP plumbing, resilience patterns,
// at-most-once writes, Postgres and Redis. A service built from this
// template keeps these packages and replaces the domain beside them.
//
// One rule keeps that possible, and layout_test.go enforces it: nothing
// under internal/platform imports the domain (internal/payments), the
// wiring (internal/app) or a command, and none of its files speaks the
// domain's vocabulary, not even in a comment or an example. The domain
// depends on the platform, never the other way round.
package platform
