// Command txpipe is the transaction pipeline's one binary: it migrates the
// database, creates the topics, and runs the ingest API, the workers and the
// outbox relay, alone or together. Run "txpipe help" for the subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/txpipe/txpipe/consumers/ledger"
)

func main() {
	if len(os.Args) > 1 {
		if gc, ok := gcDefaults(os.Args[1], os.LookupEnv); ok {
			debug.SetGCPercent(gc.percent)
			debug.SetMemoryLimit(gc.limit)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr, lookup: os.LookupEnv})
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	var uerr usageError
	if errors.As(err, &uerr) {
		fmt.Fprintln(os.Stderr, "txpipe:", err)
		os.Exit(2)
	}
	if errors.Is(err, errViolations) {
		os.Exit(1) // the report said what
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "txpipe:", err)
		os.Exit(1)
	}
}

// gcSettings are a process's garbage collector settings.
type gcSettings struct {
	percent int   // GOGC
	limit   int64 // GOMEMLIMIT, bytes
}

// gcDefaults are the collector settings of a worker, a relay or "all"
// when the operator set neither GOGC nor GOMEMLIMIT: a collection once the
// heap has grown by 400 % of what is live, instead of Go's 100 %, but never
// past a 256 MiB soft limit. Their heaps are small (tens of MiB live) and
// churn through every batch's buffers, so at Go's default they collect
// several times a batch: these settings measured 1.08× the txpipe
// scenario's throughput for 269 against 168 MiB of the worker's peak RSS
// (docs/benchmarks.md). Past the limit the collector runs more often, as
// at the default, and never stops the process. ok is false when the role
// keeps Go's defaults: ingest, the one-shot subcommands, or an operator's
// own GOGC or GOMEMLIMIT (either one: they are tuned together).
func gcDefaults(role string, lookup func(string) (string, bool)) (gc gcSettings, ok bool) {
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
	return gcSettings{percent: 400, limit: 256 << 20}, true
}

// env is what a run sees of its surroundings; tests supply their own.
type env struct {
	stdout io.Writer // reports (verify)
	stderr io.Writer // logs and usage
	lookup func(string) (string, bool)
	// onListen, when set, learns the address each server listens on (tests
	// listen on port 0).
	onListen func(server, addr string)
	// clock, when set, dates the workers' decisions instead of
	// PostgreSQL's now() (tests cross a day boundary with it).
	clock ledger.Clock
}

// usageError is a mistake on the command line; main exits 2 for it.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `usage: txpipe <subcommand> [flags]

subcommands:
  migrate   apply pending database migrations, then exit
  topics    create the Kafka topics if missing, then exit
  ingest    serve the HTTP API
  worker    run the command consumers
  relay     run the outbox relay
  all       ingest + worker + relay in one process
  verify    audit the invariants against PostgreSQL and the topics; exit 1 on any violation
  dlq list  show the dead letters (reason, origin, command id)
  dlq replay --records p@o,…|all   send dead letters back to the commands topic
  outbox parked [--reason R]       show the outbox rows the relay parked (id, topic, reason)
  outbox unpark --reason R | --ids ID,… | --all   move parked rows back to be published
  balances publish   write every account's balance to the balances topic (after the upgrade that
            brought it, or to rebuild it)
  offsets list   show each partition's stored offset, the log's bounds, halts and the last resets
  offsets reset --partition N --to earliest|latest|OFFSET --reason TEXT [--by NAME]
            decide where a (halted) partition resumes; recorded with who, when and why
  apikey create --name N --scopes commands:write,ledger:read   print a new API key (once)
  apikey list | apikey revoke --id KEY_ID
  kafka-acls --ingest-user U --worker-user U --relay-user U [--reader-user U]
            grant each role's SASL user only what it needs on the topics
  metadata-key new --id ID   print a new key for --metadata-keys
  metadata-key rotate        re-seal all account metadata under the first of --metadata-keys

Every flag has an environment fallback: --kafka-brokers ⇄ TXPIPE_KAFKA_BROKERS.
Run "txpipe <subcommand> -h" for its flags.`

func run(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, usage)
		return usageError{"no subcommand given"}
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "migrate":
		return runMigrate(ctx, rest, e)
	case "topics":
		return runTopics(ctx, rest, e)
	case "verify":
		return runVerify(ctx, rest, e)
	case "dlq":
		return runDLQ(ctx, rest, e)
	case "outbox":
		return runOutbox(ctx, rest, e)
	case "balances":
		return runBalances(ctx, rest, e)
	case "offsets":
		return runOffsets(ctx, rest, e)
	case "apikey":
		return runAPIKey(ctx, rest, e)
	case "kafka-acls":
		return runKafkaACLs(ctx, rest, e)
	case "metadata-key":
		return runMetadataKey(ctx, rest, e)
	case "ingest", "worker", "relay", "all":
		return runServe(ctx, sub, rest, e)
	case "help", "-h", "--help":
		fmt.Fprintln(e.stderr, usage)
		return nil
	default:
		fmt.Fprintln(e.stderr, usage)
		return usageError{fmt.Sprintf("unknown subcommand %q", sub)}
	}
}
