package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// gcSettings are a process's garbage collector settings.
type gcSettings struct {
	percent int   // GOGC
	limit   int64 // GOMEMLIMIT, bytes
}

// defaultMemoryLimit is the soft memory limit of a worker, a relay or
// "all" outside a memory-limited cgroup.
const defaultMemoryLimit = 256 << 20

// gcDefaults are the collector settings of a worker, a relay or "all"
// when the operator set neither GOGC nor GOMEMLIMIT: a collection once the
// heap has grown by 400 % of what is live, instead of Go's 100 %, under a
// soft memory limit of four fifths of the cgroup's (cgroupLimit, a
// container's), or 256 MiB where there is none. Their heaps churn through
// every batch's buffers, so at Go's default they collect several times a
// batch: these settings measured 1.08× the txpipe scenario's throughput,
// for 269 against 168 MiB of the worker's peak RSS (docs/benchmarks.md).
// Near the limit the collector runs as often as it must, up to half the
// CPU, and never stops the process; the fifth left is for what the limit
// does not count (the binary's own pages, memory outside Go's). ok is false
// when the role keeps Go's defaults: ingest, the one-shot subcommands, or
// an operator's own GOGC or GOMEMLIMIT (either one: they are tuned
// together).
func gcDefaults(role string, lookup func(string) (string, bool), cgroupLimit int64) (gc gcSettings, ok bool) {
	switch role {
	case "worker", "relay", "all":
	default:
		return gcSettings{}, false
	}
	if _, set := lookup("GOGC"); set {
		return gcSettings{}, false
	}
	if _, set := lookup("GOMEMLIMIT"); set {
		return gcSettings{}, false
	}
	limit := int64(defaultMemoryLimit)
	if cgroupLimit > 0 {
		limit = cgroupLimit / 5 * 4
	}
	return gcSettings{percent: 400, limit: limit}, true
}

// cgroupMemoryLimit is the memory limit of the cgroup this process runs
// in, read from procCgroup (/proc/self/cgroup) and the cgroup filesystem
// at root (/sys/fs/cgroup): cgroup v2's memory.max, or v1's
// memory.limit_in_bytes. 0 when there is none, or it cannot be read.
func cgroupMemoryLimit(procCgroup, root string) int64 {
	b, err := os.ReadFile(procCgroup)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var candidates []string
		switch {
		case f[0] == "0" && f[1] == "": // v2
			candidates = []string{filepath.Join(root, f[2], "memory.max"), filepath.Join(root, "memory.max")}
		case f[1] == "memory": // v1
			candidates = []string{filepath.Join(root, "memory", f[2], "memory.limit_in_bytes"), filepath.Join(root, "memory", "memory.limit_in_bytes")}
		}
		for _, c := range candidates {
			if n := readLimit(c); n > 0 {
				return n
			}
		}
	}
	return 0
}

// readLimit reads a cgroup memory limit file: 0 for "max", for v1's
// "unlimited" (a number near the largest int64), or when unreadable.
func readLimit(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0
	}
	return n
}
