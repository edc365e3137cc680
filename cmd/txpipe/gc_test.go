package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestGCDefaultsOnlyWhereTheOperatorSetNone(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	with := func(name string) func(string) (string, bool) {
		return func(k string) (string, bool) { return "x", k == name }
	}
	for _, tc := range []struct {
		role   string
		lookup func(string) (string, bool)
		cgroup int64
		ok     bool
		limit  int64
	}{
		{"worker", none, 0, true, 256 << 20},
		{"relay", none, 0, true, 256 << 20},
		{"all", none, 0, true, 256 << 20},
		{"relay", none, 256 << 20, true, 256 << 20 / 5 * 4}, // a container's limit: four fifths of it
		{"worker", none, 4 << 30, true, 4 << 30 / 5 * 4},
		{"ingest", none, 0, false, 0},
		{"migrate", none, 0, false, 0},
		{"verify", none, 0, false, 0},
		{"worker", with("GOGC"), 0, false, 0},
		{"relay", with("GOMEMLIMIT"), 0, false, 0},
		{"worker", with("TXPIPE_LANES"), 0, true, 256 << 20},
	} {
		gc, ok := gcDefaults(tc.role, tc.lookup, tc.cgroup)
		if ok != tc.ok {
			t.Errorf("%s (cgroup %d): ok = %v, want %v", tc.role, tc.cgroup, ok, tc.ok)
		}
		if ok && (gc.percent != 400 || gc.limit != tc.limit) {
			t.Errorf("%s (cgroup %d): %+v, want GOGC 400 and a limit of %d", tc.role, tc.cgroup, gc, tc.limit)
		}
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	write := func(t *testing.T, path, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		proc  string
		files map[string]string
		want  int64
	}{
		{"v2, limited", "0::/kubepods/pod1/c1\n", map[string]string{"kubepods/pod1/c1/memory.max": "268435456\n"}, 256 << 20},
		{"v2, namespaced to the root", "0::/\n", map[string]string{"memory.max": "536870912\n"}, 512 << 20},
		{"v2, max", "0::/\n", map[string]string{"memory.max": "max\n"}, 0},
		{"v1, limited", "4:memory:/docker/abc\n1:cpu:/\n", map[string]string{"memory/docker/abc/memory.limit_in_bytes": "1073741824\n"}, 1 << 30},
		{"v1, unlimited", "4:memory:/process_api/x\n", map[string]string{"memory/process_api/x/memory.limit_in_bytes": "9223372036854771712\n"}, 0},
		{"no cgroup files", "0::/user.slice\n", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			proc := filepath.Join(dir, "proc-self-cgroup")
			write(t, proc, tc.proc)
			root := filepath.Join(dir, "cgroup")
			for p, body := range tc.files {
				write(t, filepath.Join(root, p), body)
			}
			if got := cgroupMemoryLimit(proc, root); got != tc.want {
				t.Errorf("cgroupMemoryLimit = %d, want %d", got, tc.want)
			}
		})
	}
	if got := cgroupMemoryLimit(filepath.Join(t.TempDir(), "missing"), "/nonexistent"); got != 0 {
		t.Errorf("no /proc/self/cgroup: %d, want 0", got)
	}
}
