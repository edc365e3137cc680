package httpserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestStatusPanels: each panel is read when the page is served and shown
// as a table, as its empty text, or as the error that kept it from being
// read, with what it read escaped.
func TestStatusPanels(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := NewStatus(reg)
	reads := 0
	s.AddPanel(Panel{ID: "rows", Title: "Halted partitions", Columns: []string{"partition", "why"}, Empty: "none",
		Rows: func(ctx context.Context) ([][]string, error) {
			reads++
			if _, ok := ctx.Deadline(); !ok {
				return nil, errors.New("no deadline")
			}
			return [][]string{{"0", "past the end <b>"}}, nil
		}})
	s.AddPanel(Panel{ID: "empty", Title: "Offset resets", Columns: []string{"at"}, Empty: "none yet",
		Rows: func(context.Context) ([][]string, error) { return nil, nil }})
	s.AddPanel(Panel{ID: "broken", Title: "Broken", Columns: []string{"x"}, Empty: "none",
		Rows: func(context.Context) ([][]string, error) { return nil, errors.New("database unreachable") }})
	srv := httptest.NewServer(AdminHandler(reg, nil, s))
	defer srv.Close()

	for i := range 2 {
		resp, err := http.Get(srv.URL + "/status")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := string(b)
		tests := []struct{ name, want string }{
			{"table", `<table id="rows"><tr><th>partition</th><th>why</th></tr>`},
			{"escaped cell", "<td>past the end &lt;b&gt;</td>"},
			{"empty text", `<p id="empty">none yet</p>`},
			{"error", `<p id="broken" class="bad">cannot read: database unreachable</p>`},
			{"titles", "<h2>Halted partitions</h2>"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if !strings.Contains(page, tt.want) {
					t.Errorf("/status (load %d) lacks %s:\n%s", i+1, tt.want, page)
				}
			})
		}
	}
	if reads != 2 {
		t.Errorf("the panel was read %d times for 2 loads, want 2: it must be read when served", reads)
	}
}

// TestStatusSeriesSumTheirFamily: a series sums its family's samples, only
// those with its label's value when it names one.
func TestStatusSeriesSumTheirFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"outcome"})
	reg.MustRegister(c)
	c.WithLabelValues("applied").Add(5)
	c.WithLabelValues("dlq").Add(2)
	s := NewStatus(reg, Series{Name: "all", Family: "x_total"}, Series{Name: "dlq", Family: "x_total", Label: "outcome", Value: "dlq"},
		Series{Name: "missing", Family: "y_total"})
	s.sample(time.Now())
	if got := s.values[0]; got[0] != 7 || got[1] != 2 || got[2] != 0 {
		t.Errorf("sums = %v, want [7 2 0]", got)
	}
}
