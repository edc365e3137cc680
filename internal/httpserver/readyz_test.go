package httpserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// An optional check's failure is shown, with its detail, and leaves the
// process ready only while Optional says so.
func TestOptionalChecksLeaveTheProcessReady(t *testing.T) {
	optional := true
	checks := []Check{
		{Name: "kafka", Fn: func(context.Context) error { return nil }},
		{Name: "postgres", Fn: func(context.Context) error { return errors.New("connection refused") },
			Detail: func() string { return "primary 10.0.0.1:5432, timeline 1" }, Optional: func() bool { return optional }},
	}
	h := AdminHandler(prometheus.NewRegistry(), checks, nil)
	for _, tc := range []struct {
		optional bool
		code     int
	}{{true, http.StatusOK}, {false, http.StatusServiceUnavailable}} {
		optional = tc.optional
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		var body struct {
			Status  string
			Checks  map[string]string
			Details map[string]string
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if rec.Code != tc.code || body.Checks["postgres"] != "connection refused" || body.Details["postgres"] != "primary 10.0.0.1:5432, timeline 1" {
			t.Errorf("optional %v: /readyz = %d %+v, want %d with the failure and the detail shown", tc.optional, rec.Code, body, tc.code)
		}
	}
}
