package verify

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Paths of the files under test, from this package's directory.
const (
	repoRoot  = "../.."
	deployDir = ".."
)

// flagDef matches a flag definition of the standard flag package in
// cmd/txpipe: fs.StringVar(&x, "name", …), f.Duration("name", …), …
var flagDef = regexp.MustCompile(`\.(?:String|Int|Int64|Uint|Uint64|Float64|Duration|Bool|Func|BoolFunc|Text)(?:Var)?\(\s*(?:[^,"()]+,\s*)?"([a-z][a-z0-9-]*)"`)

// flagNames returns the name of every flag that cmd/txpipe defines, read
// from its source: the test cannot import package main of another module.
func flagNames(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "cmd", "txpipe", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range flagDef.FindAllSubmatch(b, -1) {
			names[string(m[1])] = true
		}
	}
	// Guard against a regexp that silently stopped matching.
	for _, want := range []string{"kafka-brokers", "database-url", "admin-addr", "shutdown-timeout"} {
		if !names[want] {
			t.Fatalf("no flag %q found in cmd/txpipe/*.go: has the way flags are defined changed?", want)
		}
	}
	return names
}

// settingFlag returns the flag that the environment variable env sets, as
// internal/envflag maps them (TXPIPE_KAFKA_BROKERS and
// TXPIPE_KAFKA_BROKERS_FILE set --kafka-brokers), and whether env is a
// TXPIPE_ variable at all.
func settingFlag(env string, known map[string]bool) (string, bool) {
	rest, ok := strings.CutPrefix(env, "TXPIPE_")
	if !ok {
		return "", false
	}
	name := strings.ToLower(strings.ReplaceAll(rest, "_", "-"))
	if base, ok := strings.CutSuffix(name, "-file"); ok && !known[name] {
		name = base
	}
	return name, true
}

// unknownSettings returns the TXPIPE_ variables among envs that set no flag
// of cmd/txpipe.
func unknownSettings(envs []string, known map[string]bool) []string {
	var bad []string
	for _, e := range envs {
		name, ok := settingFlag(e, known)
		if ok && !known[name] {
			bad = append(bad, e)
		}
	}
	slices.Sort(bad)
	return slices.Compact(bad)
}

func TestUnknownSettingsAreReported(t *testing.T) {
	known := map[string]bool{"kafka-brokers": true, "database-url": true, "metadata-keys": true}
	got := unknownSettings([]string{"TXPIPE_KAFKA_BROKERS", "TXPIPE_DATABASE_URL_FILE", "TXPIPE_METADATA_KEYS_FILE",
		"TXPIPE_KAFKA_BROKER", "TXPIPE_DATABASE_URL_PATH", "GOMEMLIMIT"}, known)
	want := []string{"TXPIPE_DATABASE_URL_PATH", "TXPIPE_KAFKA_BROKER"}
	if !slices.Equal(got, want) {
		t.Errorf("unknownSettings() = %v, want %v", got, want)
	}
}

// flagDefault returns the default value of a flag as written in
// cmd/txpipe/config.go: the literal after its name.
func flagDefault(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "cmd", "txpipe", "config.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"` + regexp.QuoteMeta(name) + `",\s*([^,]+),`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no default of --%s found in cmd/txpipe/config.go", name)
	}
	return strings.TrimSpace(string(m[1]))
}

// drainTimeout is the default of --shutdown-timeout: how long a stopping
// process may take to drain.
func drainTimeout(t *testing.T) time.Duration {
	t.Helper()
	def := flagDefault(t, "shutdown-timeout")
	m := regexp.MustCompile(`^(\d+)\s*\*\s*time\.(Second|Minute)$`).FindStringSubmatch(def)
	if m == nil {
		t.Fatalf("--shutdown-timeout default %q: expected N*time.Second", def)
	}
	d, err := time.ParseDuration(m[1] + map[string]string{"Second": "s", "Minute": "m"}[m[2]])
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// defaultPort returns the port of an address flag's default, ":9090" → "9090".
func defaultPort(t *testing.T, flag string) string {
	t.Helper()
	def := strings.Trim(flagDefault(t, flag), `"`)
	i := strings.LastIndex(def, ":")
	if i < 0 {
		t.Fatalf("--%s default %q has no port", flag, def)
	}
	return def[i+1:]
}

func TestConfigDefaultsAreReadable(t *testing.T) {
	if d := drainTimeout(t); d <= 0 {
		t.Errorf("drainTimeout() = %v", d)
	}
	if p := defaultPort(t, "admin-addr"); p == "" {
		t.Errorf("admin-addr port is empty")
	}
	if p := defaultPort(t, "http-addr"); p == "" {
		t.Errorf("http-addr port is empty")
	}
}

// TestDeploymentDocListsEverySetting: docs/deployment.md has a row for
// every flag of cmd/txpipe, and no row for a flag that does not exist.
func TestDeploymentDocListsEverySetting(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "deployment.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Table rows start with the flag(s): | `--database-url` | or | `--tls-cert`, `--tls-key` |.
	row := regexp.MustCompile("(?m)^\\| (`--[a-z0-9-]+`(?:, `--[a-z0-9-]+`)*)")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		for _, f := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(m[1], -1) {
			documented[f[1]] = true
		}
	}
	// Flags of one tool, described in prose below the table.
	toolOnly := []string{"name", "scopes", "id", "records",
		"ingest-user", "worker-user", "relay-user", "reader-user", "reader-group-prefix", "dry-run"}
	known := flagNames(t)
	for f := range known {
		if !documented[f] && !slices.Contains(toolOnly, f) {
			t.Errorf("docs/deployment.md: no row for --%s", f)
		}
	}
	for f := range documented {
		if !known[f] {
			t.Errorf("docs/deployment.md: row for --%s, which cmd/txpipe does not define", f)
		}
	}
}
