package main

import (
	"fmt"
	"image/color"
	"io"
	"maps"
	"math"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// window is the latency of the commands whose intended send time fell in
// one interval of a run.
type window struct {
	StartS   float64 `json:"start_s"` // seconds since the measured start
	Commands int     `json:"commands"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	// Slowest is where the window's slowest command spent its time.
	Slowest stages `json:"slowest"`
	// Host is how busy the host's CPUs were in the window.
	Host *hostCPU `json:"host_cpu,omitempty"`
}

// latencyWindows splits samples into windows of size by intended send time
// since start, in order; empty windows are left out.
func latencyWindows(ss []sample, start time.Time, size time.Duration) []window {
	buckets := map[int][]time.Duration{}
	slowest := map[int]sample{}
	for _, s := range ss {
		sent := s.sent()
		b := int(sent.Sub(start) / size)
		if sent.Before(start) {
			b = -1 - int(start.Sub(sent)/size)
		}
		buckets[b] = append(buckets[b], s.latency)
		if s.latency > slowest[b].latency {
			slowest[b] = s
		}
	}
	var ws []window
	for _, b := range slices.Sorted(maps.Keys(buckets)) {
		ds := buckets[b]
		slices.Sort(ds)
		q := func(p float64) float64 { return ms(ds[max(0, min(len(ds)-1, int(p*float64(len(ds))+0.5)-1))]) }
		ws = append(ws, window{StartS: float64(b) * size.Seconds(), Commands: len(ds), P50ms: q(0.5), P99ms: q(0.99), MaxMs: q(1),
			Slowest: slowest[b].parts})
	}
	return ws
}

// worstWindow is the window with the highest p99 among those holding at
// least least commands (a last, partial window of a few commands says
// little).
func worstWindow(ws []window, least int) (window, bool) {
	var worst window
	found := false
	for _, w := range ws {
		if w.Commands >= least && (!found || w.P99ms > worst.P99ms) {
			worst, found = w, true
		}
	}
	return worst, found
}

// windowSize is the window the chart and the worst-window figure use: 10 s,
// or 1 s for a run shorter than a minute.
func windowSize(run time.Duration) time.Duration {
	if run < time.Minute {
		return time.Second
	}
	return 10 * time.Second
}

// Colours of the series, the same in every chart.
var (
	blue   = color.RGBA{R: 30, G: 90, B: 200, A: 255}
	red    = color.RGBA{R: 210, G: 40, B: 40, A: 255}
	grey   = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	green  = color.RGBA{R: 30, G: 140, B: 60, A: 255}
	orange = color.RGBA{R: 230, G: 130, B: 0, A: 255}
)

// writeLatencyChart draws the p50, p99 and maximum latency of each window
// against seconds since the start, on a log scale (a stall of seconds and
// a p50 of milliseconds both stay readable), with the targets as dashed
// lines and the offered rate in the title, as a PNG.
func writeLatencyChart(w io.Writer, title string, ws []window, size time.Duration, targets map[string]float64) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s; p50, p99 and max per %s window", title, size)
	p.X.Label.Text = "seconds since the measured start (s)"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.Add(plotter.NewGrid())
	if len(ws) == 0 {
		return save(w, p) // an empty chart: a log scale needs values
	}
	lo, hi := math.Inf(1), 1.0
	for _, wd := range ws {
		if wd.P50ms > 0 {
			lo = min(lo, wd.P50ms)
		}
		hi = max(hi, wd.MaxMs)
	}
	for _, v := range targets {
		lo, hi = min(lo, v), max(hi, v)
	}
	if math.IsInf(lo, 1) {
		lo = 1
	}
	// Whole decades, so both ends are labelled, and one more below the
	// lowest p50: the legend sits there, bottom left, clear of the lines.
	floor := math.Pow(10, math.Floor(math.Log10(lo))-1)
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = floor, math.Pow(10, math.Ceil(math.Log10(hi)))
	p.Legend.Top, p.Legend.Left = false, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), vg.Points(4)
	series := []struct {
		name  string
		c     color.Color
		value func(window) float64
	}{
		{"max", grey, func(w window) float64 { return w.MaxMs }},
		{"p99", red, func(w window) float64 { return w.P99ms }},
		{"p50", blue, func(w window) float64 { return w.P50ms }},
	}
	for _, s := range series {
		pts := make(plotter.XYs, len(ws))
		for i, wd := range ws {
			pts[i] = plotter.XY{X: wd.StartS + size.Seconds()/2, Y: max(s.value(wd), floor)}
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color, sc.Color = s.c, s.c
		l.Width = vg.Points(1.5)
		sc.Shape, sc.Radius = draw.CircleGlyph{}, vg.Points(1.5)
		p.Add(l, sc)
		p.Legend.Add(s.name, l)
	}
	if err := addTargets(p, ws, size, targets); err != nil {
		return err
	}
	return save(w, p)
}

// targetColors tell the targets' lines apart (in the order of their names).
var targetColors = []color.Color{green, orange}

// addTargets draws each target as a dashed horizontal line across the run.
func addTargets(p *plot.Plot, ws []window, size time.Duration, targets map[string]float64) error {
	if len(ws) == 0 {
		return nil
	}
	x0, x1 := ws[0].StartS, ws[len(ws)-1].StartS+size.Seconds()
	names := slices.Sorted(maps.Keys(targets))
	for i, name := range names {
		l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: targets[name]}, {X: x1, Y: targets[name]}})
		if err != nil {
			return err
		}
		l.Color = targetColors[i%len(targetColors)]
		l.Dashes = []vg.Length{vg.Points(6), vg.Points(3 + 3*float64(i))}
		p.Add(l)
		p.Legend.Add(name, l)
	}
	return nil
}

// rateWindow is the throughput of one interval of a run.
type rateWindow struct {
	StartS    float64 `json:"start_s"`
	Accepted  float64 `json:"accepted_per_second"`
	Completed float64 `json:"completed_per_second"` // outcome events consumed
}

// writeThroughputChart draws the commands accepted by the API and the
// outcomes published, per second, in each window.
func writeThroughputChart(w io.Writer, title string, ws []rateWindow, size time.Duration) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s; per %s window", title, size)
	p.X.Label.Text = "seconds since the start (s)"
	p.Y.Label.Text = "commands per second"
	top := 1.0
	for _, r := range ws {
		top = max(top, r.Accepted, r.Completed)
	}
	p.Y.Min, p.Y.Max = 0, top*1.1
	p.Y.Tick.Marker = evenTicks{}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = false, true
	for _, s := range []struct {
		name  string
		c     color.Color
		value func(rateWindow) float64
	}{
		{"accepted by the API", grey, func(r rateWindow) float64 { return r.Accepted }},
		{"outcomes published", blue, func(r rateWindow) float64 { return r.Completed }},
	} {
		pts := make(plotter.XYs, len(ws))
		for i, r := range ws {
			pts[i] = plotter.XY{X: r.StartS + size.Seconds()/2, Y: s.value(r)}
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color, l.Width = s.c, vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(s.name, l)
	}
	return save(w, p)
}

// chartWidth and chartHeight are the PNGs' size (at gonum's 96 dpi for
// PNG: 960 × 432 pixels).
const (
	chartWidth  = 10 * vg.Inch
	chartHeight = 4.5 * vg.Inch
)

func save(w io.Writer, p *plot.Plot) error {
	wt, err := p.WriterTo(chartWidth, chartHeight, "png")
	if err != nil {
		return fmt.Errorf("render chart: %w", err)
	}
	if _, err := wt.WriteTo(w); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	return nil
}

// evenTicks labels about five round values (1, 2 or 5 × 10ⁿ apart) as
// whole numbers, where gonum's default gives two with decimals.
type evenTicks struct{}

func (evenTicks) Ticks(lo, hi float64) []plot.Tick {
	if hi <= lo {
		return []plot.Tick{{Value: lo, Label: fmt.Sprintf("%.0f", lo)}}
	}
	mag := math.Pow(10, math.Floor(math.Log10((hi-lo)/5)))
	step := mag
	for _, m := range []float64{2, 5, 10} { // the step giving nearest five ticks
		if math.Abs((hi-lo)/(m*mag)-5) < math.Abs((hi-lo)/step-5) {
			step = m * mag
		}
	}
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%.0f", v)})
		ts = append(ts, plot.Tick{Value: v + step/2}) // a minor tick between
	}
	return ts
}
