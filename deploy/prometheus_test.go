// Package deploy holds no Go code: its test checks the Prometheus files of
// deploy/prometheus with promtool (Debian's prometheus package, which
// .ci/run installs).
package deploy

import (
	"os"
	"os/exec"
	"testing"
)

func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found; .ci/run installs Debian's prometheus package")
		}
		t.Skip("promtool not found: apt-get install prometheus")
	}
	return path
}

func run(t *testing.T, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %v: %v\n%s", args, err, out)
	}
}

func TestRulesAreValid(t *testing.T) {
	run(t, promtool(t), "check", "rules", "rules.yml")
}

func TestConfigIsValid(t *testing.T) {
	run(t, promtool(t), "check", "config", "prometheus.yml")
}

// TestAlertsFireAndStayQuiet runs rules_test.yml: each alert has a case
// where it fires and one where it does not.
func TestAlertsFireAndStayQuiet(t *testing.T) {
	run(t, promtool(t), "test", "rules", "rules_test.yml")
}
