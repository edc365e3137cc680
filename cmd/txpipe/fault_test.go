package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/freeport"
	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/ledgertest"
	"github.com/txpipe/txpipe/internal/openapitest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// process is a txpipe role running as its own OS process.
type process struct {
	t     *testing.T
	bin   string
	role  string
	args  []string
	env   []string // added to the test's environment
	log   string
	cmd   *exec.Cmd
	admin string
}

func (p *process) start() {
	p.t.Helper()
	p.admin = freeAddr(p.t)
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(p.bin, append([]string{p.role, "--admin-addr", p.admin}, p.args...)...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if len(p.env) > 0 {
		p.cmd.Env = append(os.Environ(), p.env...)
	}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.role, err)
	}
}

// kill9 kills the process without warning and reaps it.
func (p *process) kill9() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		p.kill9()
		p.t.Errorf("%s did not stop within 30 s of SIGTERM", p.role)
	}
}

func (p *process) ready() bool {
	resp, err := http.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestFaultsLoseAndDoubleNothing runs ingest, two workers and a relay as
// separate processes while a retrying client posts commands, kills ingest
// once, workers five times and the relay three times with SIGKILL, stops a
// worker with SIGTERM, freezes a worker (SIGSTOP) past its session timeout
// so the group moves on without it and then thaws it, and finally checks
// that every command has exactly one outcome, the invariants hold (txpipe
// verify) and the outcomes equal the pure domain model's.
// rig runs ingest, two workers and the relay as separate processes of a
// freshly built binary against p, with seven funded accounts, and holds the
// commands of a run.
type rig struct {
	p      *pipeline
	bin    string
	dir    string
	worker []string // flags of a worker process
	relay  []string // flags of a relay process
	procs  map[string]*process
	client *retryingClient
	prefix string
	seed   uint64
	accts  []ledgertest.Account
	byID   map[string]domain.Command
}

func newRig(t *testing.T, p *pipeline) *rig {
	t.Helper()
	r := &rig{p: p, dir: t.TempDir(), byID: map[string]domain.Command{}}
	r.bin = filepath.Join(r.dir, "txpipe")
	if out, err := exec.Command("go", "build", "-o", r.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build txpipe: %v\n%s", err, out)
	}
	common := []string{"--database-url", p.db.URL, "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--commands-topic", p.topics.Commands, "--events-topic", p.topics.Events,
		"--postings-topic", p.topics.Postings, "--balances-topic", p.topics.Balances, "--dlq-topic", p.topics.DLQ, "--log-level", "info"}
	r.worker = append([]string{"--group-id", "test-" + p.topics.Commands, "--session-timeout", "6s"}, common...)
	r.relay = append([]string{"--relay-poll-interval", "200ms", "--relay-lease-ttl", "3s"}, common...)
	api := freeAddr(t)
	r.procs = map[string]*process{
		"ingest":   {t: t, bin: r.bin, role: "ingest", args: append([]string{"--http-addr", api}, common...), log: filepath.Join(r.dir, "ingest.log")},
		"worker-a": {t: t, bin: r.bin, role: "worker", args: r.worker, log: filepath.Join(r.dir, "worker-a.log")},
		"worker-b": {t: t, bin: r.bin, role: "worker", args: r.worker, log: filepath.Join(r.dir, "worker-b.log")},
		"relay":    {t: t, bin: r.bin, role: "relay", args: r.relay, log: filepath.Join(r.dir, "relay.log")},
	}
	for _, pr := range r.procs {
		pr.start()
	}
	t.Cleanup(func() {
		for _, pr := range r.procs {
			pr.stop()
		}
		if t.Failed() {
			for name, pr := range r.procs {
				b, _ := os.ReadFile(pr.log)
				t.Logf("%s log (tail):\n%s", name, tail(string(b), 3000))
			}
		}
	})
	eventually(t, "ingest, both workers and the relay are ready", func() bool {
		return r.procs["ingest"].ready() && r.procs["worker-a"].ready() && r.procs["worker-b"].ready() && r.procs["relay"].ready()
	})
	key, _ := createKey(t, p.db.URL, "fault-harness", "commands:write")
	r.client = &retryingClient{t: t, base: "http://" + api, key: key}

	var b [4]byte
	_, _ = rand.Read(b[:])
	r.prefix, r.seed = hex.EncodeToString(b[:]), uint64(b[0])<<8|uint64(b[1])
	var setup []domain.Command
	for i := range 7 {
		a := ledgertest.Account{ID: fmt.Sprintf("f%d", i+1), Currency: "EUR"}
		r.accts = append(r.accts, a)
		open := domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-9000-%012d", r.prefix, i), Type: domain.TypeOpenAccount, AccountID: a.ID, Currency: a.Currency}
		dep := domain.Command{CommandID: fmt.Sprintf("%s-0000-7000-a000-%012d", r.prefix, i), Type: domain.TypeDeposit, AccountID: a.ID, Currency: a.Currency, Amount: 5000}
		setup = append(setup, open, dep)
	}
	for _, c := range setup {
		r.byID[c.CommandID] = c
	}
	p.produceCommands(t, setup)
	eventually(t, "the accounts are open and funded", func() bool {
		var n int
		_ = p.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM processed_commands`).Scan(&n)
		return n == len(setup)
	})
	return r
}

// commands returns n generated commands, remembered for the model check.
func (r *rig) commands(n int) []domain.Command {
	gen := ledgertest.Generator{Accounts: r.accts, Base: time.Now().Add(24 * time.Hour), IDPrefix: r.prefix}
	cmds := gen.Commands(r.seed, n)
	for _, c := range cmds {
		r.byID[c.CommandID] = c
	}
	return cmds
}

func TestFaultsLoseAndDoubleNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("fault soak; runs without -short")
	}
	p := &pipeline{db: pgtest.New(t), kc: kafkatest.New(t)}
	p.topics = p.kc.Topics(t, 6)
	r := newRig(t, p)
	procs, client, bin, dir, worker, byID := r.procs, r.client, r.bin, r.dir, r.worker, r.byID

	// make chaos sets TXPIPE_CHAOS=1: it also restarts the Kafka broker and
	// crashes PostgreSQL (the shared services, so not under make test), and
	// TXPIPE_CHAOS_COMMANDS sets the length of the run.
	chaos := os.Getenv("TXPIPE_CHAOS") == "1"
	total := 4000
	if n, err := strconv.Atoi(os.Getenv("TXPIPE_CHAOS_COMMANDS")); err == nil && n >= 400 {
		total = n
	}
	cmds := r.commands(total)
	faults := map[string]int{}
	restart := func(name string) {
		procs[name].kill9()
		faults["kill -9 "+procs[name].role]++
		procs[name].start()
	}
	const chunks = 20
	per := len(cmds) / chunks
	for i := range chunks {
		chunk := cmds[i*per : (i+1)*per]
		if i == 2 {
			// Ingest dies; the client's requests fail until it is back, and
			// the client retries them with the same command_ids.
			procs["ingest"].kill9()
			faults["kill -9 ingest"]++
			back := make(chan struct{})
			go func() {
				time.Sleep(time.Second)
				procs["ingest"].start()
				close(back)
			}()
			err := client.send(chunk)
			<-back
			if err != nil {
				t.Fatal(err)
			}
			if client.retries.Load() == 0 {
				t.Fatal("no request was retried while ingest was down")
			}
		} else if err := client.send(chunk); err != nil {
			t.Fatal(err)
		}
		switch {
		case i == 13:
			// The group grows mid-load: a third worker joins and takes
			// partitions from the other two.
			procs["worker-c"] = &process{t: t, bin: bin, role: "worker", args: worker, log: filepath.Join(dir, "worker-c.log")}
			procs["worker-c"].start()
			faults["worker added"]++
		case i == 17:
			// And shrinks: the third worker leaves (SIGTERM), its
			// partitions go back to the others.
			procs["worker-c"].stop()
			faults["worker removed"]++
		case i == 8:
			// SIGTERM: the worker drains and exits (stop fails the test if
			// it takes over 30 s); its successor resumes from PostgreSQL.
			procs["worker-a"].stop()
			faults["SIGTERM worker"]++
			procs["worker-a"].start()
		case i%3 == 0 && faults["kill -9 worker"] < 5:
			restart([]string{"worker-a", "worker-b"}[i%2])
		case i%3 == 1 && faults["kill -9 relay"] < 3:
			restart("relay")
		case chaos && i == 5:
			script(t, "kafka.sh", "restart")
			faults["Kafka broker restart"]++
		case chaos && i == 15:
			script(t, "postgres.sh", "crash-restart")
			faults["PostgreSQL crash (immediate) restart"]++
		case i == 11:
			// A zombie: frozen past its session timeout, the group gives
			// its partitions to the other worker; thawed, it must not
			// commit stale work (the stored-offset fence).
			_ = procs["worker-b"].cmd.Process.Signal(syscall.SIGSTOP)
			if err := client.send(cmds[len(cmds)-per/2:]); err != nil { // more work while it is frozen
				t.Fatal(err)
			}
			time.Sleep(9 * time.Second)
			_ = procs["worker-b"].cmd.Process.Signal(syscall.SIGCONT)
			faults["SIGSTOP past session timeout"]++
		}
		// Give each new process a moment to come up before the next fault,
		// so faults land on running work, not on a starting process.
		time.Sleep(300 * time.Millisecond)
	}
	for _, k := range []string{"kill -9 ingest", "kill -9 worker", "kill -9 relay", "SIGTERM worker", "SIGSTOP past session timeout", "worker added", "worker removed"} {
		if faults[k] == 0 {
			t.Fatalf("the harness injected no %q", k)
		}
	}
	// The last half-chunk was produced twice (before and during the freeze):
	// duplicates the workers must absorb.
	out := p.verify(t)
	replayModel(t, p, byID)
	var dups float64
	for _, pr := range []string{"worker-a", "worker-b"} {
		dups += scrape(t, procs[pr].admin, `txpipe_consumer_commands_total{outcome="duplicate",reason=""}`)
	}
	t.Logf("commands acknowledged %d (+%d sent twice), requests retried %d, faults %v, duplicates absorbed by the live workers %.0f\n%s",
		len(byID), per/2, client.retries.Load(), faults, dups, out)
}

// retryingClient posts commands in batches and retries every batch that
// was not answered 202 with the same command_ids, as a careful upstream
// would: a command is acknowledged once a 202 covered it.
type retryingClient struct {
	t       *testing.T // every answer is checked against docs/openapi.yaml
	base    string
	key     string
	retries atomic.Int64
}

func (c *retryingClient) send(cmds []domain.Command) error {
	for start := 0; start < len(cmds); start += 100 {
		raw := make([]json.RawMessage, 0, 100)
		for _, cmd := range cmds[start:min(start+100, len(cmds))] {
			raw = append(raw, cmd.Encode())
		}
		body, _ := json.Marshal(map[string]any{"commands": raw})
		deadline := time.Now().Add(2 * time.Minute)
		for {
			req, _ := http.NewRequest(http.MethodPost, c.base+"/v1/commands/batch", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+c.key)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				answer, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr == nil {
					openapitest.Check(c.t, req, body, resp, answer)
				}
				if resp.StatusCode == http.StatusAccepted {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("batch not accepted for 2 minutes (last: %v)", err)
			}
			c.retries.Add(1)
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// freeAddr is an address for a process the test starts to bind itself.
func freeAddr(t *testing.T) string {
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// script runs one of scripts/ (the services the tests use) and waits.
func script(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(filepath.Join("..", "..", "scripts", name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/%s %v: %v\n%s", name, args, err, out)
	}
}

// scrape reads one sample of a process's /metrics, 0 when absent.
func scrape(t *testing.T, admin, series string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
