package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/internal/httpserver"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/internal/kafkafetch"
)

// recentResets is how many resets "offsets list" and /status show.
const recentResets = 10

// runOffsets serves "txpipe offsets list" and "txpipe offsets reset": the
// workers' stored offsets, and the operator's decision on where a halted
// (or any) partition resumes.
func runOffsets(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "reset") {
		return usageError{"usage: txpipe offsets list | reset --partition N --to earliest|latest|OFFSET --reason TEXT [--by NAME]"}
	}
	sub := args[0]
	fs := newFlagSet("offsets "+sub, e)
	fs.database()
	fs.kafka()
	fs.StringVar(&fs.cfg.commandsTopic, "commands-topic", "ledger.commands.v1", "topic of incoming commands")
	fs.StringVar(&fs.cfg.groupID, "group-id", "txpipe-workers", "consumer group of the workers")
	fs.logging()
	var partition int
	var to, reason, by string
	if sub == "reset" {
		fs.IntVar(&partition, "partition", -1, "the partition whose stored offset to set (offsets list shows them)")
		fs.StringVar(&to, "to", "", "where the partition resumes: earliest (the log's start: apply all it holds), latest (its end: skip all it holds now), or an offset")
		fs.StringVar(&reason, "reason", "", "why, in words: kept in the audit table and shown on /status")
		fs.StringVar(&by, "by", osUser(e), "who decides: kept in the audit table (default: the OS user)")
	}
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	if sub == "reset" {
		var problems []string
		if partition < 0 {
			problems = append(problems, "--partition is required: the partition to reset (txpipe offsets list)")
		}
		if _, err := parseTarget(to); err != nil {
			problems = append(problems, "--to "+err.Error())
		}
		if strings.TrimSpace(reason) == "" {
			problems = append(problems, "--reason is required: say why, for the audit table")
		}
		if strings.TrimSpace(by) == "" {
			problems = append(problems, "--by is required: the OS user is unknown")
		}
		if len(problems) > 0 {
			return usageError{"invalid settings:\n  " + strings.Join(problems, "\n  ")}
		}
	}
	log := cfg.logger(e)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	transport, _, err := cfg.kafkaClients()
	if err != nil {
		return err
	}
	defer transport.CloseIdleConnections()
	brokers := cfg.brokers()
	f := kafkafetch.New(brokers, transport, cfg.commandsTopic)
	if sub == "list" {
		client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: transport}
		return listOffsets(ctx, e.stdout, pool, client, f, cfg)
	}

	first, end, err := f.Bounds(ctx, []int{partition})
	if err != nil {
		return fmt.Errorf("read the log's bounds (a reset is decided against the log as it is): %w", err)
	}
	target, _ := parseTarget(to)
	dest := target.offset
	switch target.name {
	case "earliest":
		dest = first[partition]
	case "latest":
		dest = end[partition]
	}
	r, err := ledger.ResetOffset(ctx, pool, ledger.ResetRequest{
		GroupID: cfg.groupID, Topic: cfg.commandsTopic, Partition: partition, To: dest, Target: target.name,
		LogStart: first[partition], LogEnd: end[partition], Reason: strings.TrimSpace(reason), By: strings.TrimSpace(by),
	})
	if errors.Is(err, ledger.ErrOutsideLog) {
		return usageError{err.Error()}
	}
	if err != nil {
		return err
	}
	log.Info("stored offset reset", "partition", r.Partition, "topic", r.Topic, "group", r.GroupID, "from_offset", offsetText(r.From),
		"to_offset", r.To, "target", r.Target, "log_start", r.LogStart, "log_end", r.LogEnd, "halt_cleared", r.HaltCleared != "", "by", r.By, "reason", r.Reason)
	fmt.Fprintf(e.stdout, "partition %d of %s (group %s): stored offset %s → %d (%s; the log holds %d to %d)\n",
		r.Partition, r.Topic, r.GroupID, offsetText(r.From), r.To, r.Target, r.LogStart, r.LogEnd)
	if r.HaltCleared != "" {
		fmt.Fprintf(e.stdout, "halt cleared: %s\n", r.HaltCleared)
	}
	if r.To > r.LogStart {
		fmt.Fprintf(e.stdout, "records %d to %d of the log now in it will never be applied\n", r.LogStart, r.To-1)
	}
	fmt.Fprintf(e.stdout, "recorded: by %s at %s: %s\nRunning workers resume the partition from %d within seconds.\n",
		r.By, r.At.UTC().Format(time.RFC3339), r.Reason, r.To)
	return nil
}

// target is what --to asked for: earliest, latest or an offset.
type target struct {
	name   string
	offset int64
}

func parseTarget(s string) (target, error) {
	switch s {
	case "earliest", "latest":
		return target{name: s}, nil
	case "":
		return target{}, errors.New("is required: earliest, latest or an offset")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return target{}, fmt.Errorf("%q: want earliest, latest or an offset (a number ≥ 0)", s)
	}
	return target{name: s, offset: n}, nil
}

// osUser names who runs the command, for --by.
func osUser(e *env) string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	name, _ := e.lookup("USER")
	return name
}

func offsetText(o *int64) string {
	if o == nil {
		return "none"
	}
	return strconv.FormatInt(*o, 10)
}

// listOffsets prints every partition's stored offset, the log's bounds, its
// halt, and the last resets. The stored offsets print even when Kafka cannot
// say (the topic deleted, say).
func listOffsets(ctx context.Context, w io.Writer, pool *pgxpool.Pool, client *kafka.Client, f *kafkafetch.Fetcher, cfg *config) error {
	states, err := ledger.PartitionStates(ctx, pool, cfg.groupID, cfg.commandsTopic)
	if err != nil {
		return err
	}
	resets, err := ledger.RecentResets(ctx, pool, cfg.groupID, cfg.commandsTopic, recentResets)
	if err != nil {
		return err
	}
	stored := map[int]ledger.PartitionState{}
	var parts []int
	for _, s := range states {
		stored[s.Partition] = s
		parts = append(parts, s.Partition)
	}
	var first, end map[int]int64
	ends, kerr := kafkaadmin.EndOffsets(ctx, client, cfg.commandsTopic)
	if kerr == nil {
		inLog := slices.Sorted(maps.Keys(ends))
		parts = append(parts, inLog...)
		first, end, kerr = f.Bounds(ctx, inLog)
	}
	slices.Sort(parts)
	parts = slices.Compact(parts)
	fmt.Fprintf(w, "topic %s, group %s\n", cfg.commandsTopic, cfg.groupID)
	if kerr != nil {
		fmt.Fprintf(w, "log bounds unknown: %v\n", kerr)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tSTORED\tLOG START\tLOG END\tLAG\tSTATE")
	for _, p := range parts {
		s, has := stored[p]
		storedText, lag, state := "none", "-", "ok"
		lo, hasLog := first[p]
		hi := end[p]
		logStart, logEnd := "?", "?"
		if hasLog {
			logStart, logEnd = strconv.FormatInt(lo, 10), strconv.FormatInt(hi, 10)
		}
		if has {
			storedText = strconv.FormatInt(s.Next, 10)
			if hasLog && s.Next <= hi && s.Halt == nil { // a halted partition's lag waits for the decision
				lag = strconv.FormatInt(hi-max(s.Next, lo), 10)
			}
		}
		if has && s.Halt != nil {
			state = fmt.Sprintf("HALTED since %s (log was %d to %d): %s", s.Halt.At.UTC().Format(time.RFC3339), s.Halt.LogStart, s.Halt.LogEnd, s.Halt.Reason)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", p, storedText, logStart, logEnd, lag, state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nlast %d resets:\n", recentResets)
	if len(resets) == 0 {
		fmt.Fprintln(w, "none")
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tBY\tPARTITION\tFROM\tTO\tTARGET\tLOG\tHALT CLEARED\tREASON")
	for _, r := range resets {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%d to %d\t%s\t%s\n", r.At.UTC().Format(time.RFC3339), r.By, r.Partition,
			offsetText(r.From), r.To, r.Target, r.LogStart, r.LogEnd, yesNo(r.HaltCleared != ""), r.Reason)
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// offsetPanels are the status page's tables of halted partitions and
// offset resets of the commands topic, for every consumer group: any
// process (ingest and relay have no --group-id) shows them.
func offsetPanels(pool *pgxpool.Pool, topic string) []httpserver.Panel {
	return []httpserver.Panel{{
		ID:      "halted-partitions",
		Title:   "Halted partitions",
		Columns: []string{"group", "partition", "stored offset", "halted at", "log seen", "why", "to resume"},
		Empty:   "none: every partition with a stored offset fits its log",
		Rows: func(ctx context.Context) ([][]string, error) {
			states, err := ledger.PartitionStates(ctx, pool, "", topic)
			if err != nil {
				return nil, err
			}
			var rows [][]string
			for _, s := range states {
				if s.Halt == nil {
					continue
				}
				rows = append(rows, []string{s.GroupID, strconv.Itoa(s.Partition), strconv.FormatInt(s.Next, 10),
					s.Halt.At.UTC().Format(time.RFC3339), fmt.Sprintf("%d to %d", s.Halt.LogStart, s.Halt.LogEnd), s.Halt.Reason,
					fmt.Sprintf("txpipe offsets reset --partition %d --to earliest|latest|OFFSET --reason …", s.Partition)})
			}
			return rows, nil
		},
	}, {
		ID:      "offset-resets",
		Title:   fmt.Sprintf("Offset resets (last %d)", recentResets),
		Columns: []string{"at", "by", "group", "partition", "from → to", "target", "log", "halt cleared", "reason"},
		Empty:   "none",
		Rows: func(ctx context.Context) ([][]string, error) {
			resets, err := ledger.RecentResets(ctx, pool, "", topic, recentResets)
			if err != nil {
				return nil, err
			}
			var rows [][]string
			for _, r := range resets {
				rows = append(rows, []string{r.At.UTC().Format(time.RFC3339), r.By, r.GroupID, strconv.Itoa(r.Partition),
					offsetText(r.From) + " → " + strconv.FormatInt(r.To, 10), r.Target, fmt.Sprintf("%d to %d", r.LogStart, r.LogEnd),
					r.HaltCleared, r.Reason})
			}
			return rows, nil
		},
	}}
}
