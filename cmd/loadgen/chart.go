package main

import (
	"image"
	"image/color"
	"image/png"
	"io"
	"slices"
	"time"
)

// writeChart draws latency over time as a PNG: for each second of intended
// send time, the p50 (blue), p99 (red) and maximum (grey) latency. The x
// axis spans the run, the y axis 0 to the largest maximum; grid lines mark
// every 10 s and every quarter of the y range. It uses only the standard
// library, so it carries no text: the markdown report gives the scales.
func writeChart(w io.Writer, ss []sample) (yMax time.Duration, err error) {
	const width, height, margin = 900, 400, 20
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	if len(ss) == 0 {
		return 0, png.Encode(w, img)
	}
	start := ss[0].sent
	for _, s := range ss {
		if s.sent.Before(start) {
			start = s.sent
		}
	}
	buckets := map[int][]time.Duration{}
	last := 0
	for _, s := range ss {
		b := int(s.sent.Sub(start) / time.Second)
		buckets[b] = append(buckets[b], s.latency)
		last = max(last, b)
		yMax = max(yMax, s.latency)
	}
	if yMax == 0 {
		yMax = time.Millisecond
	}
	plotW, plotH := width-2*margin, height-2*margin
	x := func(sec int) int { return margin + sec*plotW/max(1, last) }
	y := func(d time.Duration) int { return height - margin - int(int64(plotH)*int64(d)/int64(yMax)) }
	grid := color.RGBA{225, 225, 225, 255}
	for sec := 0; sec <= last; sec += 10 {
		line(img, x(sec), margin, x(sec), height-margin, grid)
	}
	for q := 1; q <= 4; q++ {
		yy := y(yMax * time.Duration(q) / 4)
		line(img, margin, yy, width-margin, yy, grid)
	}
	black := color.RGBA{0, 0, 0, 255}
	line(img, margin, height-margin, width-margin, height-margin, black)
	line(img, margin, margin, margin, height-margin, black)
	series := []struct {
		q float64
		c color.RGBA
	}{{1, color.RGBA{150, 150, 150, 255}}, {0.99, color.RGBA{220, 30, 30, 255}}, {0.5, color.RGBA{30, 60, 220, 255}}}
	for _, s := range series {
		px, py := -1, -1
		for sec := 0; sec <= last; sec++ {
			ds := buckets[sec]
			if len(ds) == 0 {
				continue
			}
			slices.Sort(ds)
			v := ds[max(0, min(len(ds)-1, int(s.q*float64(len(ds))+0.5)-1))]
			cx, cy := x(sec), y(v)
			if px >= 0 {
				line(img, px, py, cx, cy, s.c)
			}
			px, py = cx, cy
		}
	}
	return yMax, png.Encode(w, img)
}

// line draws a straight line (Bresenham).
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		img.SetRGBA(x0, y0+1, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
