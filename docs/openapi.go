// Package docs carries the documents the binary serves: the OpenAPI
// description of the HTTP API (openapi.yaml), which GET /v1/openapi.json
// returns and the end-to-end tests check every request and response
// against.
package docs

import _ "embed"

// OpenAPI is openapi.yaml, the OpenAPI 3.1 description of the HTTP API.
//
//go:embed openapi.yaml
var OpenAPI []byte
