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
		if gc, ok := gcDefaults(os.Args[1], os.LookupEnv, cgroupMemoryLimit("/proc/self/cgroup", "/sys/fs/cgroup")); ok {
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
