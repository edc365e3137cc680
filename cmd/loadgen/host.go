package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// hostWriteback says how this host's kernel writes dirty pages back, from
// /proc/sys/vm: with the defaults (a ratio of memory, nothing in bytes)
// writeback comes in bursts every 30 s that stall PostgreSQL's commits,
// and the latency figures show them (scripts/host.sh, docs/deployment.md).
// Reported with the figures, since they depend on it. It is this host's:
// with PostgreSQL elsewhere, say that host's with the figures.
func hostWriteback() string {
	read := func(name string) string {
		b, err := os.ReadFile("/proc/sys/vm/" + name)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	bytes, ratio := read("dirty_background_bytes"), read("dirty_background_ratio")
	switch {
	case bytes == "" && ratio == "":
		return "unknown (no /proc/sys/vm)"
	case bytes != "" && bytes != "0":
		return fmt.Sprintf("vm.dirty_background_bytes = %s (scripts/host.sh)", bytes)
	case ratio == "":
		return "unknown (vm.dirty_background_ratio unreadable)"
	default:
		return fmt.Sprintf("vm.dirty_background_ratio = %s %% of memory, the kernel's default: writeback in bursts (scripts/host.sh apply)", ratio)
	}
}

// cpuReading is one reading of the host's CPU counters: how long some task
// has waited for a CPU (/proc/pressure/cpu, "some"), and the ticks of
// /proc/stat's cpu line spent busy, stolen by the hypervisor, and in all.
type cpuReading struct {
	at                        time.Time
	waitedUs                  int64
	busy, steal, total        int64
	hasPressure, hasTickCount bool
}

// readCPU reads the host's counters; a counter the kernel does not expose
// is left out (has* false) rather than read as zero.
func readCPU() cpuReading {
	r := cpuReading{at: time.Now()}
	if b, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		r.waitedUs, r.hasPressure = parsePressure(string(b))
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		r.busy, r.steal, r.total, r.hasTickCount = parseStat(string(b))
	}
	return r
}

// parsePressure reads the "some" line's total (microseconds some task
// waited) of a /proc/pressure file.
func parsePressure(text string) (waitedUs int64, ok bool) {
	line, _, _ := strings.Cut(text, "\n")
	i := strings.Index(line, "total=")
	if !strings.HasPrefix(line, "some ") || i < 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(line[i+len("total="):]), 10, 64)
	return v, err == nil
}

// parseStat reads /proc/stat's first line, the ticks of all CPUs:
//
//	cpu user nice system idle iowait irq softirq steal guest guest_nice
//
// busy is user, nice, system, irq and softirq; total adds idle, iowait and
// steal. guest and guest_nice are already counted in user and nice.
func parseStat(text string) (busy, steal, total int64, ok bool) {
	line, _, _ := strings.Cut(text, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, 0, false
	}
	var v [8]int64
	for i := range v {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		v[i] = n
	}
	busy = v[0] + v[1] + v[2] + v[5] + v[6]
	return busy, v[7], busy + v[3] + v[4] + v[7], true
}

// hostCPU is how busy the host's CPUs were between two readings, in
// percent: Pressure is the share of the time some task waited for a CPU
// (txpipe's own processes, PostgreSQL's, Kafka's, loadgen's and any other
// tenant's alike), Busy the share of CPU time spent running, Steal the
// share the hypervisor gave to other machines. A latency figure measured
// while Pressure was high says as much about the host as about txpipe.
// A field is -1 when the host does not expose its counter (results.json
// keeps the -1: read it as unknown, not as a figure).
type hostCPU struct {
	PressurePct float64 `json:"cpu_pressure_pct"`
	BusyPct     float64 `json:"cpu_busy_pct"`
	StealPct    float64 `json:"cpu_steal_pct"`
}

func cpuBetween(a, b cpuReading) hostCPU {
	h := hostCPU{PressurePct: -1, BusyPct: -1, StealPct: -1}
	if d := b.at.Sub(a.at); a.hasPressure && b.hasPressure && d > 0 {
		h.PressurePct = 100 * float64(b.waitedUs-a.waitedUs) / float64(d.Microseconds())
	}
	if t := b.total - a.total; a.hasTickCount && b.hasTickCount && t > 0 {
		h.BusyPct = 100 * float64(b.busy-a.busy) / float64(t)
		h.StealPct = 100 * float64(b.steal-a.steal) / float64(t)
	}
	return h
}

// cpuInWindow is the host's CPU over [from, to] from readings taken in
// order: from the first reading at or after from to the first at or after
// to (the last one when the run ended first), so that consecutive windows
// share their boundary reading and together cover every second of the run
// once, each shifted by the sampler's lag after the whole second; when no
// two readings span it that way, between the nearest ones around it, so
// that a window is never judged on nothing.
func cpuInWindow(rs []cpuReading, from, to time.Time) (hostCPU, bool) {
	if len(rs) < 2 {
		return hostCPU{}, false
	}
	i := sort.Search(len(rs), func(i int) bool { return !rs[i].at.Before(from) })
	j := min(sort.Search(len(rs), func(j int) bool { return !rs[j].at.Before(to) }), len(rs)-1)
	if j <= i { // widen to the readings around the window
		i = sort.Search(len(rs), func(i int) bool { return rs[i].at.After(from) }) - 1
		j = sort.Search(len(rs), func(j int) bool { return !rs[j].at.Before(to) })
		i, j = max(i, 0), min(j, len(rs)-1)
	}
	if j <= i {
		return hostCPU{}, false
	}
	return cpuBetween(rs[i], rs[j]), true
}

func (h hostCPU) String() string {
	pct := func(v float64) string {
		if v < 0 {
			return "unknown"
		}
		return fmt.Sprintf("%.0f %%", v)
	}
	return fmt.Sprintf("CPU pressure %s, busy %s, stolen %s", pct(h.PressurePct), pct(h.BusyPct), pct(h.StealPct))
}
