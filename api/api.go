// Package api holds the OpenAPI description of the service's public HTTP
// API. It is embedded so that one file is both what the server serves at
// GET /openapi.yaml and what the tests check every request and response
// against: the description cannot drift from the binary it ships in.
package api

import _ "embed"

// Spec is api/openapi.yaml, an OpenAPI 3.1 document.
//
//go:embed openapi.yaml
var Spec []byte
