package envflag

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParsePrecedence(t *testing.T) {
	env := map[string]string{
		"TXPIPE_KAFKA_BROKERS": "env:9092",
		"TXPIPE_HTTP_ADDR":     "env:8080",
		"TXPIPE_BATCH_LINGER":  "7ms",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	brokers := fs.String("kafka-brokers", "default:9092", "")
	addr := fs.String("http-addr", ":8080", "")
	level := fs.String("log-level", "info", "")
	linger := fs.Duration("batch-linger", time.Millisecond, "")
	if err := Parse(fs, []string{"--http-addr", "flag:1"}, lookup); err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"kafka-brokers (env over default)", *brokers, "env:9092"},
		{"http-addr (flag over env)", *addr, "flag:1"},
		{"log-level (default)", *level, "info"},
		{"batch-linger (typed env)", linger.String(), "7ms"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
}

func TestParseBadEnvNamesVariable(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int("batch-size", 1, "")
	err := Parse(fs, nil, func(k string) (string, bool) { return "many", k == "TXPIPE_BATCH_SIZE" })
	if err == nil || !strings.Contains(err.Error(), "TXPIPE_BATCH_SIZE") {
		t.Errorf("Parse() error = %v, want one naming TXPIPE_BATCH_SIZE", err)
	}
}

func TestParseReadsSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	secret := dir + "/db"
	if err := os.WriteFile(secret, []byte("postgres://u:s3cret@h/db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := dir + "/bad"
	if err := os.WriteFile(bad, []byte("s3cret-not-a-duration"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TXPIPE_DATABASE_URL_FILE": secret, "TXPIPE_KAFKA_BROKERS": "env:1", "TXPIPE_KAFKA_BROKERS_FILE": bad}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	db := fs.String("database-url", "", "")
	brokers := fs.String("kafka-brokers", "", "")
	if err := Parse(fs, nil, lookup); err != nil {
		t.Fatal(err)
	}
	if *db != "postgres://u:s3cret@h/db" || *brokers != "env:1" {
		t.Errorf("database-url %q (want the file's content), kafka-brokers %q (the variable wins over _FILE)", *db, *brokers)
	}

	// A file whose content is not a valid value: the error names the file,
	// never the content.
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	fs.Duration("batch-linger", 0, "")
	env = map[string]string{"TXPIPE_BATCH_LINGER_FILE": bad}
	err := Parse(fs, nil, lookup)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), bad) {
		t.Errorf("Parse() error = %v: want one naming %s without its content", err, bad)
	}
}
