package main

import (
	"bytes"
	"fmt"
	"image/png"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ss []sample
	for i := 1; i <= 1000; i++ {
		ss = append(ss, sample{latency: time.Duration(i) * time.Millisecond})
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {0.999, 999 * time.Millisecond}, {1, time.Second}} {
		if got := percentile(ss, c.q); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestWorkloadSkew(t *testing.T) {
	hotShare := func(w workload) float64 {
		cmds := w.transfers(10000)
		hot := 0
		for _, c := range cmds {
			if c.FromAccountID == c.ToAccountID {
				t.Fatalf("transfer %s moves money to itself", c.CommandID)
			}
			var a, b int
			if _, err := fmt.Sscanf(c.FromAccountID, "acct-%d", &a); err != nil {
				t.Fatal(err)
			}
			if _, err := fmt.Sscanf(c.ToAccountID, "acct-%d", &b); err != nil {
				t.Fatal(err)
			}
			if a < w.hot && b < w.hot {
				hot++
			}
		}
		return float64(hot) / float64(len(cmds))
	}
	if got := hotShare(workload{accounts: 10000, hot: 10, skew: 0.5, seed: 1}); got < 0.45 || got > 0.55 {
		t.Errorf("skewed workload: %.2f of transfers between hot accounts, want about 0.5", got)
	}
	if got := hotShare(workload{accounts: 10000, hot: 10, seed: 1}); got > 0.01 {
		t.Errorf("uniform workload: %.2f of transfers between hot accounts, want about 0", got)
	}
}

func TestChartIsAPNG(t *testing.T) {
	start := time.Now()
	var ss []sample
	for i := range 300 {
		ss = append(ss, sample{sent: start.Add(time.Duration(i) * 50 * time.Millisecond), latency: time.Duration(i%40) * time.Millisecond})
	}
	var buf bytes.Buffer
	yMax, err := writeChart(&buf, ss)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 900 || b.Dy() != 400 || yMax != 39*time.Millisecond {
		t.Errorf("chart %v with y max %v, want 900×400 and 39ms", b, yMax)
	}
}
