package main

import (
	"fmt"
	"os"
	"strings"
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
