// Command loadgen drives txpipe and measures it.
//
//	loadgen run    load a running pipeline (HTTP single, HTTP batch, or the
//	               commands topic), open loop, and measure end-to-end latency
//	loadgen bench  the side-by-side benchmark of make bench, on databases
//	               preloaded with a million processed commands: sustained
//	               latency at a fixed rate and sustained throughput over
//	               HTTP (the headline, against the targets), then naive vs
//	               txpipe vs the PostgreSQL and Kafka ceilings, skewed vs
//	               uniform, one worker vs three
//
// Every flag has an environment fallback (--kafka-brokers ⇄ TXPIPE_KAFKA_BROKERS).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/envflag"
	"github.com/txpipe/txpipe/internal/kafkawriter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

const usage = `usage: loadgen run|bench [flags]   (loadgen <subcommand> -h for flags)`

func run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("loadgen "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("kafka-brokers", "127.0.0.1:9092", "Kafka bootstrap brokers")
	accounts := fs.Int("accounts", 10000, "accounts acct-0 … acct-N-1")
	rate := fs.Float64("rate", 1000, "commands per second, open loop")
	out := fs.String("out", "bench-results", "folder for results.json, results.md and latency.png")
	switch args[0] {
	case "bench":
		txpipe := fs.String("txpipe", "bin/txpipe", "the txpipe binary under test")
		dbURL := fs.String("database-url", "", "PostgreSQL server URL; each scenario creates and drops its own database")
		quick := fs.Bool("quick", false, "shorter runs (BENCH_QUICK): sustained runs of 2 minutes, smaller throughput runs")
		rounds := fs.Int("rounds", 3, "runs of each throughput scenario, interleaved; the median counts")
		only := fs.String("only", "", "run only the scenarios whose names start with one of these comma-separated prefixes, or are a name ending in $ "+
			"(sustained-latency, sustained-throughput, naive, txpipe, txpipe-baseline, txpipe-skewed, txpipe-3w2r, txpipe-split3fee, txpipe-pgbouncer, replica-async, replica-sync, replica-remote-apply, pg-ceiling, kafka-ceiling)")
		scripts := fs.String("scripts", "scripts", "the folder of postgres.sh and pgbouncer.sh, which the replica and PgBouncer scenarios run")
		preload := fs.Int("preload-commands", 1000000, "processed commands in every scenario's database before it starts, copied from a template built once (0: fresh databases)")
		sustained := fs.Duration("sustained-duration", 0, "how long sustained-latency sends (default 10m, 2m with --quick); make soak sets it")
		throughputFor := fs.Duration("throughput-duration", 0, "how long sustained-throughput sends (default 5m, 2m with --quick)")
		baseline := fs.String("baseline", "", "another txpipe binary: the txpipe scenario also runs with it, interleaved, as txpipe-baseline (ratio txpipe/baseline); it must know every migration of this tree, since the preload is migrated by this loadgen")
		workerArgs := fs.String("worker-args", "", "extra flags for the worker of the txpipe scenarios, e.g. \"--batch-linger 20ms\"")
		if err := envflag.Parse(fs, args[1:], os.LookupEnv); err != nil {
			return err
		}
		if *dbURL == "" {
			return errors.New("--database-url (TXPIPE_DATABASE_URL) is required")
		}
		if err := checkRate(*rate); err != nil {
			return err
		}
		if *preload < 0 || *sustained < 0 || *throughputFor < 0 {
			return errors.New("--preload-commands, --sustained-duration and --throughput-duration must not be negative")
		}
		if *sustained == 0 {
			*sustained = 10 * time.Minute
			if *quick {
				*sustained = 2 * time.Minute
			}
		}
		if *throughputFor == 0 {
			*throughputFor = 5 * time.Minute
			if *quick {
				*throughputFor = 2 * time.Minute
			}
		}
		return runBench(ctx, benchOptions{txpipe: *txpipe, brokers: strings.Split(*brokers, ","), adminURL: *dbURL, out: *out,
			quick: *quick, accounts: *accounts, rate: *rate, workerArgs: strings.Fields(*workerArgs), baseline: *baseline, only: *only, rounds: max(1, *rounds),
			preload: *preload, sustained: *sustained, throughputFor: *throughputFor, scripts: *scripts, log: stderr})
	case "run":
		api := fs.String("api", "http://127.0.0.1:8080", "base URL of the txpipe API")
		key := fs.String("api-key", "", "API key with commands:write and ledger:read")
		mode := fs.String("mode", "http", "http (one command per request), batch (--batch per request) or kafka (straight to the commands topic)")
		batch := fs.Int("batch", 100, "commands per request in batch mode, per produce call in kafka mode")
		hot := fs.Int("hot", 10, "size of the hot set of accounts")
		skew := fs.Float64("skew", 0, "share of transfers between hot accounts (0–1)")
		total := fs.Int("total", 0, "commands to send (0: rate × duration)")
		duration := fs.Duration("duration", 10*time.Second, "how long to send, when --total is 0")
		setup := fs.Bool("setup", false, "first open and fund the accounts through the API")
		commands := fs.String("commands-topic", "ledger.commands.v1", "commands topic (kafka mode)")
		events := fs.String("events-topic", "ledger.events.v1", "events topic, consumed to measure latency")
		if err := envflag.Parse(fs, args[1:], os.LookupEnv); err != nil {
			return err
		}
		if err := checkRate(*rate); err != nil {
			return err
		}
		if *total < 0 || *duration < 0 {
			return errors.New("--total and --duration must not be negative")
		}
		n := *total
		if n == 0 {
			n = int(*rate * duration.Seconds())
		}
		if *key == "" {
			return errors.New("--api-key (TXPIPE_API_KEY) is required: txpipe apikey create --name loadgen --scopes commands:write,ledger:read")
		}
		return runLoad(ctx, loadOptions{api: *api, key: *key, brokers: strings.Split(*brokers, ","), mode: *mode, group: *batch,
			wl: workload{accounts: *accounts, hot: *hot, skew: *skew, seed: uint64(time.Now().UnixNano())},
			n:  n, rate: *rate, setup: *setup, commandsTopic: *commands, eventsTopic: *events, out: *out, log: stderr})
	}
	return errors.New(usage)
}

// minRate and maxRate bound --rate. The open loop schedules command i at
// i/rate seconds, in an int64 of nanoseconds: at 0.01 a second that holds
// 92 million commands (29 years), where a rate of 1e-12 overflowed at the
// second command. Above a million a second is a load this tool could not
// offer.
const (
	minRate = 0.01
	maxRate = 1_000_000
)

// checkRate refuses a rate that is not a finite number of commands a
// second within those bounds, rather than sending nothing or a garbled
// schedule.
func checkRate(r float64) error {
	if !(r >= minRate && r <= maxRate) { // also refuses NaN
		return fmt.Errorf("--rate must be between %v and %d commands a second, not %v", minRate, maxRate, r)
	}
	return nil
}

type loadOptions struct {
	api                        string
	key                        string
	brokers                    []string
	mode                       string
	group                      int
	wl                         workload
	n                          int
	rate                       float64
	setup                      bool
	commandsTopic, eventsTopic string
	out                        string
	log                        io.Writer
}

// runLoad loads a running pipeline and reports latency.
func runLoad(ctx context.Context, o loadOptions) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(o.brokers...), Timeout: 10 * time.Second, Transport: transport}
	if o.setup {
		if err := setupAccounts(ctx, o); err != nil {
			return err
		}
	}
	var send sender
	group := 1
	switch o.mode {
	case "http":
		send = httpSender(o.api, o.key)
	case "batch":
		send, group = httpSender(o.api, o.key), o.group
	case "kafka":
		w := kafkawriter.New(kafkawriter.Options{Brokers: o.brokers, Transport: transport})
		defer w.Close()
		send, group = kafkaSender(w, o.commandsTopic), o.group
	default:
		return fmt.Errorf("--mode %q: want http, batch or kafka", o.mode)
	}
	l := newLatencies()
	stop, err := watchOutcomes(ctx, o.brokers, client, o.eventsTopic, l)
	if err != nil {
		return err
	}
	defer stop()
	start := time.Now()
	last := time.Now()
	openLoop(ctx, o.n, o.wl.stream(), group, o.rate, send, l, func() {
		if time.Since(last) > 5*time.Second {
			fmt.Fprintf(o.log, "loadgen: sent %d/%d, accepted %d, failed %d, outcomes %d\n",
				l.accepted.Load()+l.failed.Load(), o.n, l.accepted.Load(), l.failed.Load(), l.done())
			last = time.Now()
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for l.done() < int(l.accepted.Load()) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	ss := l.snapshot()
	f, err := os.Create(o.out + "/latency.png")
	if err != nil {
		return err
	}
	size := windowSize(time.Since(start))
	err = writeLatencyChart(f, fmt.Sprintf("loadgen run --mode %s: %.0f commands/s offered, open loop", o.mode, o.rate),
		latencyWindows(ss, start, size), size, nil)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	r := result{Scenario: "run-" + o.mode, Commands: len(ss), Seconds: secs, PerSecond: float64(len(ss)) / secs,
		P50ms: ms(percentile(ss, 0.5)), P99ms: ms(percentile(ss, 0.99)), P999ms: ms(percentile(ss, 0.999)),
		Note: fmt.Sprintf("%.0f/s open loop; chart latency.png; %d failed, %d without outcome",
			o.rate, l.failed.Load(), int(l.accepted.Load())-len(ss))}
	if err := writeReport(o.out, report{Date: time.Now().UTC(), Results: []result{r}, Ratios: map[string]float64{}}); err != nil {
		return err
	}
	printTable(o.log, []result{r})
	return nil
}

// setupAccounts opens acct-0 … acct-N-1 in EUR and deposits 10^9 cents in
// each, through the batch API, and waits for the last deposit to apply.
//
// The API's rate limit (txpipe ingest --rate-limit, 2000 commands a second
// by default) refuses a setup faster than that with 429: each refused batch
// is sent again when its Retry-After says.
func setupAccounts(ctx context.Context, o loadOptions) error {
	send := newRetrier().wrap(httpSender(o.api, o.key))
	var cmds []domain.Command
	for i := range o.wl.accounts {
		id := accountID(i)
		cmds = append(cmds,
			domain.Command{CommandID: fmt.Sprintf("5e7e0000-0000-7000-8000-%012d", 2*i), Type: domain.TypeOpenAccount, AccountID: id, Currency: "EUR"},
			domain.Command{CommandID: fmt.Sprintf("5e7e0000-0000-7000-8000-%012d", 2*i+1), Type: domain.TypeDeposit, AccountID: id, Amount: 1000000000, Currency: "EUR"})
	}
	for i := 0; i < len(cmds); i += 500 {
		if err := send(ctx, cmds[i:min(i+500, len(cmds))]); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	last := o.api + "/v1/commands/" + cmds[len(cmds)-1].CommandID
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, last, nil)
		req.Header.Set("Authorization", "Bearer "+o.key)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	fmt.Fprintf(o.log, "loadgen: opened and funded %d accounts\n", o.wl.accounts)
	return nil
}
