package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/internal/pgtest"
)

// TestSecretsNeverReachLogsOrResponses runs txpipe with canary secrets and
// scans every log line and response body for them: a database password
// (read from a _FILE, and wrong, so the connection fails and its error is
// logged), a valid API key used for real work, and a wrong API key.
func TestSecretsNeverReachLogsOrResponses(t *testing.T) {
	// 1. A database URL with a canary password, from TXPIPE_DATABASE_URL_FILE.
	db := pgtest.New(t)
	u, _ := url.Parse(db.URL)
	const dbCanary = "canary-db-password-7c1e"
	u.User = url.UserPassword(u.User.Username(), dbCanary)
	secretFile := filepath.Join(t.TempDir(), "database-url")
	if err := os.WriteFile(secretFile, []byte(u.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	e := &env{stdout: &logs, stderr: &lockedWriter{w: &logs},
		lookup: func(k string) (string, bool) {
			if k == "TXPIPE_DATABASE_URL_FILE" {
				return secretFile, true
			}
			return "", false
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := run(ctx, []string{"apikey", "list", "--log-level", "debug"}, e)
	if err == nil {
		t.Fatal("apikey list with a wrong database password succeeded")
	}
	if strings.Contains(err.Error()+logs.String(), dbCanary) {
		t.Errorf("the database password reached the error or the log:\n%v\n%s", err, logs.String())
	}

	// 2. A running pipeline, debug logging, a valid key and a wrong one.
	p := startPipeline(t)
	_, secret, _ := strings.Cut(strings.TrimPrefix(p.key, "txp_"), "_")
	wrong := "txp_" + p.keyID + "_" + strings.Repeat("Q", 43)
	var bodies []string
	record := func(status int, body map[string]any) {
		bodies = append(bodies, fmt.Sprint(status, body))
	}
	id := uuid.Must(uuid.NewV7()).String()
	record(p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"s","currency":"EUR"}`, id)))
	p.awaitOutcome(t, id)
	for _, c := range []struct{ method, path, body, key string }{
		{"GET", "/v1/accounts/s", "", p.key},
		{"GET", "/v1/accounts/s", "", wrong},
		{"POST", "/v1/commands", `{"bad":`, p.key},
		{"POST", "/v1/commands", "{}", wrong},
	} {
		status, body, _ := p.request(t, c.method, c.path, c.body, c.key)
		record(status, body)
	}
	everything := strings.Join(bodies, "\n") + p.logs()
	for name, canary := range map[string]string{"the API key's secret": secret, "a wrong key's secret": strings.Repeat("Q", 43)} {
		if strings.Contains(everything, canary) {
			t.Errorf("%s reached a log line or a response", name)
		}
	}
	if !strings.Contains(p.logs(), "api listening") || len(bodies) != 5 {
		t.Errorf("the scan saw %d bodies and %d bytes of log: too little to prove anything", len(bodies), len(p.logs()))
	}
}
