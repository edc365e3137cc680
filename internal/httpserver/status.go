package httpserver

import (
	"context"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Series is a figure the status page follows: a metric family summed over
// its samples (those whose label Label has the value Value, when Label is
// set), shown as its rate (a counter) or its value (a gauge). The packages
// that define the metrics name them; cmd/txpipe picks the figures.
type Series struct {
	Name, Family string
	Label, Value string
	Rate         bool
}

const statusSamples = 150 // 5 minutes at one sample every 2 s

// Status keeps the last minutes of the pipeline's main figures and the
// last warnings and errors logged, and serves them as one server-rendered
// page (/status on the admin address) for when no Grafana is at hand.
type Status struct {
	g      prometheus.Gatherer
	series []Series
	checks []Check
	panels []Panel

	mu      sync.Mutex
	at      []time.Time
	values  [][]float64 // per sample, per series
	lastErr []string
}

// NewStatus returns a Status following series in g. AdminHandler gives it
// the readiness checks and serves it.
func NewStatus(g prometheus.Gatherer, series ...Series) *Status { return &Status{g: g, series: series} }

// Panel is a table of the status page read each time the page is served,
// such as the halted partitions from PostgreSQL.
type Panel struct {
	ID, Title string
	Columns   []string
	Empty     string // shown when there are no rows
	// Rows reads the rows, each with a cell per column. It has a second;
	// its error is shown in place of the table.
	Rows func(ctx context.Context) ([][]string, error)
}

// AddPanel adds p to the page, below the figures. Call it before serving.
func (s *Status) AddPanel(p Panel) { s.panels = append(s.panels, p) }

// panelView is a Panel as read for one page.
type panelView struct {
	Panel
	Cells [][]string
	Err   string
}

func (s *Status) readPanels(ctx context.Context) []panelView {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	views := make([]panelView, len(s.panels))
	for i, p := range s.panels {
		views[i].Panel = p
		rows, err := p.Rows(ctx)
		if err != nil {
			views[i].Err = err.Error()
		}
		views[i].Cells = rows
	}
	return views
}

// Run samples the figures every 2 s until ctx ends.
func (s *Status) Run(ctx context.Context) error {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		s.sample(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Status) sample(now time.Time) {
	mfs, err := s.g.Gather()
	if err != nil {
		return
	}
	sums := make([]float64, len(s.series))
	for i, ser := range s.series {
		for _, mf := range mfs {
			if mf.GetName() == ser.Family {
				sums[i] = sumFamily(mf, ser.Label, ser.Value)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.at = append(s.at, now)
	s.values = append(s.values, sums)
	if len(s.at) > statusSamples {
		s.at, s.values = s.at[1:], s.values[1:]
	}
}

// sumFamily adds a family's samples, keeping those whose label name has
// value (all of them when name is "").
func sumFamily(mf *dto.MetricFamily, name, value string) float64 {
	var sum float64
	for _, m := range mf.GetMetric() {
		if name != "" {
			ok := false
			for _, l := range m.GetLabel() {
				ok = ok || (l.GetName() == name && l.GetValue() == value)
			}
			if !ok {
				continue
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// LogHandler wraps h so that warnings and errors are also kept, the last 20,
// for the page.
func (s *Status) LogHandler(h slog.Handler) slog.Handler { return &statusLog{Handler: h, s: s} }

type statusLog struct {
	slog.Handler
	s     *Status
	attrs []slog.Attr
}

func (l *statusLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s %s", r.Time.UTC().Format("15:04:05"), r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" || a.Key == "detail" || a.Key == "partition" {
				fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			}
			return true
		})
		l.s.mu.Lock()
		l.s.lastErr = append(l.s.lastErr, b.String())
		if len(l.s.lastErr) > 20 {
			l.s.lastErr = l.s.lastErr[1:]
		}
		l.s.mu.Unlock()
	}
	return l.Handler.Handle(ctx, r)
}

func (l *statusLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &statusLog{Handler: l.Handler.WithAttrs(as), s: l.s}
}

func (l *statusLog) WithGroup(name string) slog.Handler {
	return &statusLog{Handler: l.Handler.WithGroup(name), s: l.s}
}

type statusRow struct {
	Name, Now string
	Points    string // SVG polyline points
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>txpipe status</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}
.ok{color:#070}.bad{color:#b00}svg{background:#f7f7f7}pre{background:#f7f7f7;padding:8px;white-space:pre-wrap}
</style></head><body>
<h1>txpipe status</h1>
<p id="readiness" class="{{if .Ready}}ok{{else}}bad{{end}}">{{if .Ready}}ready{{else}}not ready{{end}} — {{.Now}}</p>
<table id="checks"><tr><th>dependency</th><th>state</th></tr>
{{range .Checks}}<tr><td>{{.Name}}</td><td class="{{if eq .State "ok"}}ok{{else}}bad{{end}}">{{.State}}</td></tr>{{end}}
</table>
<h2>Last five minutes</h2>
<table id="figures"><tr><th>figure</th><th>now</th><th>trend</th></tr>
{{range .Rows}}<tr><td>{{.Name}}</td><td class="value" data-name="{{.Name}}">{{.Now}}</td>
<td><svg width="300" height="40" viewBox="0 0 300 40"><polyline fill="none" stroke="#36c" stroke-width="1.5" points="{{.Points}}"/></svg></td></tr>{{end}}
</table>
{{range .Panels}}<h2>{{.Title}}</h2>
{{if .Err}}<p id="{{.ID}}" class="bad">cannot read: {{.Err}}</p>
{{else if .Cells}}<table id="{{.ID}}"><tr>{{range .Columns}}<th>{{.}}</th>{{end}}</tr>
{{range .Cells}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p id="{{.ID}}">{{.Empty}}</p>
{{end}}{{end}}<h2>Last warnings and errors</h2>
<pre id="errors">{{range .Errors}}{{.}}
{{else}}none{{end}}</pre>
</body></html>`))

// ServeHTTP renders the page.
func (s *Status) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	results := runChecks(r.Context(), s.checks)
	type check struct{ Name, State string }
	data := struct {
		Ready  bool
		Now    string
		Checks []check
		Rows   []statusRow
		Panels []panelView
		Errors []string
	}{Ready: true, Now: time.Now().UTC().Format(time.RFC3339), Panels: s.readPanels(r.Context())}
	for _, c := range s.checks {
		data.Checks = append(data.Checks, check{c.Name, results[c.Name]})
		data.Ready = data.Ready && (results[c.Name] == "ok" || c.optional())
	}
	s.mu.Lock()
	for i, ser := range s.series {
		var pts []float64
		for j := range s.values {
			v := s.values[j][i]
			if ser.Rate {
				if j == 0 {
					continue
				}
				dt := s.at[j].Sub(s.at[j-1]).Seconds()
				v = max(0, v-s.values[j-1][i]) / max(dt, 0.001)
			}
			pts = append(pts, v)
		}
		row := statusRow{Name: ser.Name, Now: "–"}
		if len(pts) > 0 {
			row.Now = fmt.Sprintf("%.1f", pts[len(pts)-1])
			row.Points = sparkline(pts)
		}
		data.Rows = append(data.Rows, row)
	}
	data.Errors = append([]string(nil), s.lastErr...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if !data.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = statusPage.Execute(w, data) // the client went away; nothing to do
}

// sparkline scales pts into a 300×40 box as SVG polyline points.
func sparkline(pts []float64) string {
	top := 0.0
	for _, p := range pts {
		top = max(top, p)
	}
	if top == 0 {
		top = 1
	}
	var b strings.Builder
	for i, p := range pts {
		x := float64(i) * 300 / float64(max(1, statusSamples-1))
		fmt.Fprintf(&b, "%.1f,%.1f ", x, 38-36*p/top)
	}
	return strings.TrimSpace(b.String())
}
