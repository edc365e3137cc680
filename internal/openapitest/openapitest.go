// Package openapitest checks HTTP exchanges against docs/openapi.yaml with
// libopenapi-validator, so that the document cannot drift from the server:
// every response must match it, every request the server accepted must
// match it, and every request it describes as invalid must be refused.
package openapitest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	valerrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/helpers"

	"github.com/txpipe/txpipe/docs"
)

var (
	once    sync.Once
	shared  validator.Validator
	loadErr error
	mu      sync.Mutex // the validator is not documented as safe for concurrent use
)

// Validator returns the validator of docs/openapi.yaml, checked once
// against the OpenAPI 3.1 specification itself.
func Validator(t testing.TB) validator.Validator {
	t.Helper()
	once.Do(func() {
		doc, err := libopenapi.NewDocument(docs.OpenAPI)
		if err != nil {
			loadErr = fmt.Errorf("parse docs/openapi.yaml: %w", err)
			return
		}
		v, errs := validator.NewValidator(doc)
		if len(errs) > 0 {
			loadErr = fmt.Errorf("build a validator of docs/openapi.yaml: %v", errs)
			return
		}
		if ok, verrs := v.ValidateDocument(); !ok {
			loadErr = fmt.Errorf("docs/openapi.yaml is not a valid OpenAPI document:\n%s", describe(verrs))
			return
		}
		shared = v
	})
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	return shared
}

// Check validates one exchange: req was sent with body reqBody, and resp
// came back with body respBody (both already read; the bodies are given
// back to the validator fresh). It reports through t.Errorf.
func Check(t testing.TB, req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t.Helper()
	v := Validator(t)
	mu.Lock()
	defer mu.Unlock()
	req = req.Clone(req.Context())
	req.Body = io.NopCloser(bytes.NewReader(reqBody))
	reqOK, reqErrs := v.ValidateHttpRequestSync(req)
	req.Body = io.NopCloser(bytes.NewReader(reqBody))
	r := *resp
	r.Body = io.NopCloser(bytes.NewReader(respBody))
	respOK, respErrs := v.ValidateHttpResponse(req, &r)
	what := req.Method + " " + req.URL.RequestURI()
	if unrouted(respErrs) {
		// A path or method the API does not have (a hostile test's): the
		// answer must say so, as a problem.
		if (resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed) ||
			resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("OpenAPI: %s, a route docs/openapi.yaml lacks, was answered %d %s, want a 404 or 405 problem",
				what, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return
	}
	if !respOK {
		t.Errorf("OpenAPI: the response %d to %s does not match docs/openapi.yaml:\n%s\nbody: %s", resp.StatusCode, what, describe(respErrs), clip(respBody))
	}
	switch {
	case !reqOK && resp.StatusCode < 400:
		t.Errorf("OpenAPI: %s was answered %d, but docs/openapi.yaml says it is invalid:\n%s", what, resp.StatusCode, describe(reqErrs))
	case !reqOK && resp.StatusCode >= 500:
		t.Errorf("OpenAPI: %s, invalid per docs/openapi.yaml, was answered %d, want a 4xx", what, resp.StatusCode)
	}
}

// unrouted reports whether the exchange's path or method is not in the
// document.
func unrouted(errs []*valerrors.ValidationError) bool {
	for _, e := range errs {
		if e.ValidationType == helpers.PathValidation {
			return true
		}
	}
	return false
}

func describe(errs []*valerrors.ValidationError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "  - %s: %s\n", e.Message, e.Reason)
		for _, s := range e.SchemaValidationErrors {
			fmt.Fprintf(&b, "      %s: %s\n", s.FieldPath, s.Reason)
		}
	}
	return b.String()
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}
