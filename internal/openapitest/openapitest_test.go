package openapitest_test

import (
	"testing"

	"github.com/txpipe/txpipe/internal/openapitest"
)

// docs/openapi.yaml is a valid OpenAPI 3.1 document.
func TestTheDocumentIsValidOpenAPI(t *testing.T) {
	openapitest.Validator(t)
}
