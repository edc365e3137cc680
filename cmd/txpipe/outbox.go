package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/txpipe/txpipe/outbox"
)

// runOutbox serves "txpipe outbox parked" (list the rows the relay parked)
// and "txpipe outbox unpark" (move them back to be published again).
func runOutbox(ctx context.Context, args []string, e *env) error {
	if len(args) == 0 || (args[0] != "parked" && args[0] != "unpark") {
		return usageError{"usage: txpipe outbox parked [--reason R] [--ids ID,…] | unpark --reason R | --ids ID,… | --all"}
	}
	sub := args[0]
	fs := newFlagSet("outbox "+sub, e)
	fs.database()
	fs.logging()
	var reason, idList string
	var all bool
	limit := 1000
	fs.StringVar(&reason, "reason", "", "only rows parked for this reason: "+strings.Join(outbox.ParkReasons, ", "))
	fs.StringVar(&idList, "ids", "", "only these rows: comma-separated outbox ids (as outbox parked and the relay's log show them)")
	if sub == "parked" {
		fs.IntVar(&limit, "limit", limit, "most rows listed")
	} else {
		fs.BoolVar(&all, "all", false, "unpark every parked row")
	}
	cfg, err := fs.parse(args[1:], e)
	if err != nil {
		return err
	}
	f, err := parkedFilter(reason, idList)
	if err != nil {
		return err
	}
	if sub == "unpark" && f.Reason == "" && len(f.IDs) == 0 && !all {
		return usageError{"say which rows to unpark: --reason R, --ids ID,… or --all"}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	pool, err := cfg.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if sub == "unpark" {
		n, err := outbox.Unpark(ctx, pool, f)
		if err != nil {
			return err
		}
		cfg.logger(e).Info("outbox rows unparked", "rows", n, "reason", f.Reason, "ids", len(f.IDs))
		fmt.Fprintf(e.stdout, "%d rows back in the outbox; the relay publishes them (or parks them again if Kafka still refuses them)\n", n)
		return nil
	}
	list, err := outbox.ListParked(ctx, pool, f, limit)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTOPIC\tREASON\tBYTES\tWRITTEN\tPARKED")
	for _, p := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", p.ID, p.Topic, p.Reason, p.Bytes, p.CreatedAt.UTC().Format(time.RFC3339), p.ParkedAt.UTC().Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d parked rows listed (at most %d)\n", len(list), limit)
	return nil
}

// parkedFilter checks --reason and --ids.
func parkedFilter(reason, idList string) (outbox.ParkedFilter, error) {
	f := outbox.ParkedFilter{Reason: reason}
	if reason != "" && !slices.Contains(outbox.ParkReasons, reason) {
		return f, usageError{fmt.Sprintf("--reason %q: want one of %s", reason, strings.Join(outbox.ParkReasons, ", "))}
	}
	for _, s := range strings.Split(idList, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return f, usageError{fmt.Sprintf("--ids: %q is not an outbox id", s)}
		}
		f.IDs = append(f.IDs, id)
	}
	return f, nil
}
