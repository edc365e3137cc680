package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/freeport"
)

// stack is one benchmark scenario's pipeline: its own database and topics,
// and txpipe processes started from the binary under test.
type stack struct {
	name     string
	txpipe   string
	brokers  []string
	adminURL string
	dbName   string
	dbURL    string
	// serveURL, when set, is the database as the processes reach it
	// (through PgBouncer); dbURL stays PostgreSQL's own, for the relay's
	// LISTEN and the bench's reads.
	serveURL string
	pool     *pgxpool.Pool
	topics   map[string]string // commands, events, postings, balances, dlq
	logDir   string
	procs    []*proc
	key      string // an API key with every scope
	sealKeys string // the processes' --metadata-keys, passed in their environment
}

type proc struct {
	role  string
	cmd   *exec.Cmd
	admin string
	http  string
}

// newStack creates the scenario's database — a copy of the preload
// template, or with no template a fresh one with accounts acct-0…N-1
// funded with 10^9 cents each — migrates it (a no-op unless the binary
// under test has migrations the template lacks), makes an API key and a
// metadata key, and creates fresh topics of 12 partitions. On failure it
// drops what it created.
func newStack(ctx context.Context, name string, o benchOptions) (st *stack, err error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	s := &stack{name: name, txpipe: o.txpipe, brokers: o.brokers, adminURL: o.adminURL, dbName: "txpipe_bench_" + id, logDir: o.out,
		topics: map[string]string{}}
	for _, t := range []string{"commands", "events", "postings", "balances", "dlq"} {
		s.topics[t] = "bench." + id + "." + t
	}
	admin, err := pgx.Connect(ctx, o.adminURL)
	if err != nil {
		return nil, fmt.Errorf("connect to the database server: %w", err)
	}
	defer admin.Close(ctx)
	if o.template != "" {
		err = cloneDatabase(ctx, admin, o.template, s.dbName)
	} else {
		_, err = admin.Exec(ctx, "CREATE DATABASE "+s.dbName)
	}
	if err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	defer func() {
		if err != nil {
			tr := &kafka.Transport{}
			defer tr.CloseIdleConnections()
			s.close(context.WithoutCancel(ctx), &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 10 * time.Second, Transport: tr})
		}
	}()
	s.dbURL = databaseURL(o.adminURL, s.dbName)
	if o.pooler != "" {
		s.serveURL = databaseURL(o.pooler, s.dbName)
	}
	if err := s.runOnce(ctx, "migrate"); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, s.txpipe, "apikey", "create", "--database-url", s.dbURL, "--name", "bench",
		"--scopes", "commands:write,ledger:read").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "api key: "); ok {
			s.key = v
		}
	}
	if err != nil || s.key == "" {
		return nil, fmt.Errorf("txpipe apikey create: %v: %s", err, out)
	}
	sealKey, err := exec.CommandContext(ctx, s.txpipe, "metadata-key", "new", "--id", "bench").Output()
	if err != nil {
		return nil, fmt.Errorf("txpipe metadata-key new: %v", err)
	}
	s.sealKeys = strings.TrimSpace(string(sealKey))
	if err := s.runOnce(ctx, "topics", "--partitions", "12"); err != nil {
		return nil, err
	}
	if s.pool, err = pgxpool.New(ctx, s.dbURL); err != nil {
		return nil, err
	}
	if o.template != "" {
		return s, nil
	}
	if err = ledger.SeedFunded(ctx, s.pool, "acct-", o.accounts, 1000000000); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *stack) flags() []string {
	db := s.dbURL
	if s.serveURL != "" {
		db = s.serveURL
	}
	return []string{"--database-url", db, "--kafka-brokers", strings.Join(s.brokers, ","),
		"--commands-topic", s.topics["commands"], "--events-topic", s.topics["events"],
		"--postings-topic", s.topics["postings"], "--balances-topic", s.topics["balances"], "--dlq-topic", s.topics["dlq"]}
}

func (s *stack) runOnce(ctx context.Context, sub string, extra ...string) error {
	args := []string{sub, "--log-level", "warn"}
	switch sub {
	case "migrate":
		args = append(args, "--database-url", s.dbURL)
	case "topics":
		args = append(args, "--kafka-brokers", strings.Join(s.brokers, ","),
			"--commands-topic", s.topics["commands"], "--events-topic", s.topics["events"],
			"--postings-topic", s.topics["postings"], "--balances-topic", s.topics["balances"], "--dlq-topic", s.topics["dlq"])
	}
	out, err := exec.CommandContext(ctx, s.txpipe, append(args, extra...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("txpipe %s: %w: %s", sub, err, out)
	}
	return nil
}

// start runs "txpipe role" as a separate process and waits until its
// /readyz answers 200.
func (s *stack) start(ctx context.Context, role string, extra ...string) (*proc, error) {
	p := &proc{role: role, admin: freeAddr()}
	args := append([]string{role, "--admin-addr", p.admin, "--log-level", "warn"}, s.flags()...)
	switch role {
	case "worker":
		args = append(args, "--group-id", "bench-"+s.dbName)
	case "ingest", "all":
		p.http = freeAddr()
		args = append(args, "--http-addr", p.http)
	}
	if (role == "relay" || role == "all") && s.serveURL != "" {
		args = append(args, "--relay-listen-url", s.dbURL)
	}
	args = append(args, extra...)
	logf, err := os.Create(filepath.Join(s.logDir, fmt.Sprintf("%s-%s-%d.log", s.name, role, len(s.procs))))
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(s.txpipe, args...)
	p.cmd.Env = append(os.Environ(), "TXPIPE_METADATA_KEYS="+s.sealKeys)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start txpipe %s: %w", role, err)
	}
	s.procs = append(s.procs, p)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("txpipe %s not ready after 60 s (see %s)", role, logf.Name())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dropDatabase drops name, retrying for a few seconds. A plain DROP ends an
// autovacuum worker busy in the database, which DROP … WITH (FORCE)
// refuses to do without the right to signal a superuser's process (the
// bench's copies were left behind that way); FORCE then ends sessions of
// this role still connected.
func dropDatabase(ctx context.Context, admin *pgx.Conn, name string) error {
	var err error
	for range 10 {
		if _, err = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err == nil {
			return nil
		}
		if _, err = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
	return err
}

// peakRSS is the process's high-water resident set size in bytes (VmHWM).
func (p *proc) peakRSS() int64 { return p.status("VmHWM:") }

// rss is the process's resident set size now, in bytes (VmRSS).
func (p *proc) rss() int64 { return p.status("VmRSS:") }

// status reads a size in kB from /proc/<pid>/status, in bytes.
func (p *proc) status(field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// close stops the processes (SIGTERM, then SIGKILL after 20 s), and drops
// the database and topics.
func (s *stack) close(ctx context.Context, client *kafka.Client) {
	for _, p := range s.procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if admin, err := pgx.Connect(ctx, s.adminURL); err == nil {
		if err := dropDatabase(ctx, admin, s.dbName); err != nil {
			fmt.Fprintf(os.Stderr, "bench: could not drop %s: %v\n", s.dbName, err)
		}
		admin.Close(ctx)
	}
	var names []string
	for _, t := range s.topics {
		names = append(names, t)
	}
	_, _ = client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: names})
}

// freeAddr is an address for a txpipe process to bind itself.
func freeAddr() string {
	addr, err := freeport.Addr()
	if err != nil {
		return "127.0.0.1:0"
	}
	return addr
}
