package producers_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/producers"
)

// recordingWriter stands in for Kafka: it acknowledges every record and
// keeps it.
type recordingWriter struct {
	mu   sync.Mutex
	msgs []kafka.Message
}

func (w *recordingWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msgs...)
	return nil
}

func (w *recordingWriter) written() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.msgs)
}

func TestIngestRefusesBadInputWithProblems(t *testing.T) {
	w := &recordingWriter{}
	h := newTestAPI(t, producers.APIOptions{Producer: producers.NewProducer(w, "ledger.commands.v1"), MaxBodyBytes: 256 << 10})
	var many []string
	for range producers.MaxBatchCommands + 1 {
		many = append(many, deposit("1"))
	}
	tests := []struct {
		name, path, body string
		status           int
		pointer          string
	}{
		{"unknown field", "/v1/commands", `{"command_id":"` + uuid.Must(uuid.NewV7()).String() + `","type":"deposit","account_id":"a","amount":1,"currency":"EUR","memo":"x"}`, 400, "/memo"},
		{"float amount", "/v1/commands", deposit("10.5"), 400, "/amount"},
		{"bad currency", "/v1/commands", strings.Replace(deposit("1"), "EUR", "EURO", 1), 400, "/currency"},
		{"trailing data", "/v1/commands", deposit("1") + `{}`, 400, ""},
		{"empty body", "/v1/commands", ``, 400, ""},
		{"command too large", "/v1/commands", `{"pad":"` + strings.Repeat("x", domain.MaxCommandBytes) + `"}`, 413, ""},
		{"batch too large", "/v1/commands/batch", `{"commands":["` + strings.Repeat("x", 256<<10) + `"]}`, 413, ""},
		{"batch item invalid", "/v1/commands/batch", `{"commands":[` + deposit("1") + `,` + deposit("0") + `]}`, 400, "/commands/1/amount"},
		{"batch too many", "/v1/commands/batch", `{"commands":[` + strings.Join(many, ",") + `]}`, 400, "/commands"},
		{"batch empty", "/v1/commands/batch", `{"commands":[]}`, 400, "/commands"},
		{"batch unknown field", "/v1/commands/batch", `{"commands":[],"extra":1}`, 400, ""},
		{"batch with a closing brace after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]}}`, 400, ""},
		{"batch with a closing bracket after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]}]`, 400, ""},
		{"batch with a second envelope after it", "/v1/commands/batch", `{"commands":[` + deposit("1") + `]} {"commands":[]}`, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(h, http.MethodPost, tt.path, tt.body)
			p := problemOf(t, rec)
			if rec.Code != tt.status {
				t.Fatalf("POST %s = %d, want %d", tt.path, rec.Code, tt.status)
			}
			if !strings.HasPrefix(p.Type, producers.ProblemTypeBase) || p.Title == "" {
				t.Errorf("problem = %+v, want a txpipe type and a title", p)
			}
			if tt.pointer != "" {
				found := false
				for _, fe := range p.Errors {
					found = found || fe.Pointer == tt.pointer
				}
				if !found {
					t.Errorf("problem errors = %+v, want one at %s", p.Errors, tt.pointer)
				}
			}
		})
	}
	if n := w.written(); n != 0 {
		t.Errorf("the producer wrote %d records after only bad requests, want 0", n)
	}
}

// panickingWriter stands in for a bug on the request path.
type panickingWriter struct{}

func (panickingWriter) WriteMessages(context.Context, ...kafka.Message) error { panic("a bug") }

// TestHandlerPanicIsAProblemNotADroppedConnection: a panic while serving a
// request is answered 500 problem+json, counted, and the server goes on.
func TestHandlerPanicIsAProblemNotADroppedConnection(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(newTestAPI(t, producers.APIOptions{
		Producer: producers.NewProducer(panickingWriter{}, "commands"), Registerer: reg,
	}))
	t.Cleanup(srv.Close)
	for range 2 { // the second shows the server survived the first
		resp, p := doAs(t, testKey, "POST", srv.URL+"/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"a","currency":"EUR"}`, uuid.Must(uuid.NewV7()).String()))
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("Content-Type") != "application/problem+json" || p.Type != producers.ProblemTypeBase+"internal-error" {
			t.Fatalf("POST with a panicking producer = %d %q %+v, want 500 problem+json internal-error", resp.StatusCode, resp.Header.Get("Content-Type"), p)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "txpipe_ingest_recovered_panics_total" {
			if got := mf.GetMetric()[0].GetCounter().GetValue(); got != 2 {
				t.Errorf("txpipe_ingest_recovered_panics_total = %v, want 2", got)
			}
			return
		}
	}
	t.Error("txpipe_ingest_recovered_panics_total is not registered")
}

// TestIngestProducesWhatItAccepts is the control for the test above: what
// the recordingWriter is handed is what Kafka would get.
func TestIngestProducesWhatItAccepts(t *testing.T) {
	w := &recordingWriter{}
	h := newTestAPI(t, producers.APIOptions{Producer: producers.NewProducer(w, "ledger.commands.v1")})
	id := uuid.Must(uuid.NewV7()).String()
	rec := serve(h, http.MethodPost, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"transfer","from_account_id":"payer","to_account_id":"payee","amount":7,"currency":"EUR"}`, strings.ToUpper(id)))
	want := fmt.Sprintf(`{"command_id":%q,"status":"accepted"}`+"\n", id)
	if rec.Code != http.StatusAccepted || rec.Header().Get("Location") != "/v1/commands/"+id || rec.Body.String() != want {
		t.Fatalf("POST = %d Location %q %s, want 202, /v1/commands/%s and %s", rec.Code, rec.Header().Get("Location"), rec.Body, id, want)
	}
	if len(w.msgs) != 1 || string(w.msgs[0].Key) != "payer" || w.msgs[0].Topic != "ledger.commands.v1" {
		t.Fatalf("written %+v, want one record keyed payer on ledger.commands.v1", w.msgs)
	}
	if hs := w.msgs[0].Headers; len(hs) != 1 || hs[0].Key != domain.SubmittedByHeader || string(hs[0].Value) != "0123456789abcdef" {
		t.Errorf("record headers = %+v, want %s of the key", hs, domain.SubmittedByHeader)
	}
}
