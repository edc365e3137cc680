package producers

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/txpipe/txpipe/domain"
)

// ProblemTypeBase prefixes the type URI of every problem the API returns;
// the part after it names the problem in docs/api.md.
const ProblemTypeBase = "urn:txpipe:problem:"

// problem is an RFC 9457 problem details body.
type problem struct {
	Type    string              `json:"type"`
	Title   string              `json:"title"`
	Status  int                 `json:"status"`
	Detail  string              `json:"detail,omitempty"`
	Errors  []domain.FieldError `json:"errors,omitempty"`
	Results []batchItem         `json:"results,omitempty"`
}

func writeProblem(w http.ResponseWriter, p problem) {
	p.Type = ProblemTypeBase + p.Type
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p) // the client went away; nothing to do
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// statusWriter remembers the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool // a status line has gone out
}

func (s *statusWriter) WriteHeader(code int) {
	s.status, s.wrote = code, true
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// contextWithTimeout bounds the produce wait. It is detached from the
// request: a client hanging up must not cancel a write Kafka may already
// hold, or the client could retry while the first copy lands anyway
// (harmless, but a clean answer is better).
func contextWithTimeout(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), d)
}
