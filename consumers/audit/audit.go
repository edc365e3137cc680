// Package audit is the auditor behind "txpipe verify", which operators run
// in production and the tests run after every scenario: it checks the
// invariants (docs/architecture.md) against PostgreSQL, read through the
// ledger's snapshot, and the topics. It reads every topic up to its end
// offsets at the start, so it audits a snapshot; run it once the pipeline
// has drained (it reports records still in flight as a failure).
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/txpipe/txpipe/consumers"
	"github.com/txpipe/txpipe/consumers/ledger"
	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkaadmin"
	"github.com/txpipe/txpipe/ledgerstream"
	"github.com/txpipe/txpipe/outbox"
)

// Options say where to look.
type Options struct {
	Pool    *pgxpool.Pool
	Brokers []string
	Client  *kafka.Client
	// Topics and the consumer group whose stored offsets say what was
	// processed.
	CommandsTopic, EventsTopic, PostingsTopic, BalancesTopic, DLQTopic, GroupID string
}

// Report is what an audit found.
type Report struct {
	Checks     []Check
	Violations int
}

// Check is one audited statement and what contradicts it.
type Check struct {
	Name     string
	Detail   string   // counts that show what was looked at
	Problems []string // empty when the check passed
}

// OK reports whether every check passed.
func (r *Report) OK() bool { return r.Violations == 0 }

// Print writes the report, one line per check and up to ten problems each.
func (r *Report) Print(w io.Writer) {
	for _, c := range r.Checks {
		status := "ok  "
		if len(c.Problems) > 0 {
			status = "FAIL"
		}
		fmt.Fprintf(w, "%s %s (%s)\n", status, c.Name, c.Detail)
		for i, p := range c.Problems {
			if i == 10 {
				fmt.Fprintf(w, "     … and %d more\n", len(c.Problems)-10)
				break
			}
			fmt.Fprintf(w, "     - %s\n", p)
		}
	}
	if r.OK() {
		fmt.Fprintln(w, "verify: all invariants hold")
	} else {
		fmt.Fprintf(w, "verify: %d violations\n", r.Violations)
	}
}

func (r *Report) add(c Check) {
	r.Checks = append(r.Checks, c)
	r.Violations += len(c.Problems)
}

// Run audits invariants 1–5. It returns an error only when it cannot look
// (a database or broker failure); violations are in the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	db, err := loadDatabase(ctx, o.Pool, o.GroupID, o.CommandsTopic)
	if err != nil {
		return nil, err
	}
	commands, err := kafkaadmin.ReadAll(ctx, o.Client, o.Brokers, o.CommandsTopic)
	if err != nil {
		return nil, err
	}
	dlq, err := kafkaadmin.ReadAll(ctx, o.Client, o.Brokers, o.DLQTopic)
	if err != nil {
		return nil, err
	}
	events, err := kafkaadmin.ReadAll(ctx, o.Client, o.Brokers, o.EventsTopic)
	if err != nil {
		return nil, err
	}
	postings, err := kafkaadmin.ReadAll(ctx, o.Client, o.Brokers, o.PostingsTopic)
	if err != nil {
		return nil, err
	}
	var balances []kafka.Message
	if o.BalancesTopic != "" {
		if balances, err = kafkaadmin.ReadAll(ctx, o.Client, o.Brokers, o.BalancesTopic); err != nil {
			return nil, err
		}
	}
	r := &Report{}
	r.add(checkOutcomes(db, commands, dlq, events))
	r.add(checkSingleEffect(db, reverseTargets(commands)))
	r.add(checkConservation(db))
	r.add(checkBalances(db))
	r.add(checkPublished(db, postings))
	r.add(checkDigests(db, postings))
	r.add(checkStatements(db, events))
	if o.BalancesTopic != "" {
		r.add(checkBalancesTopic(db, balances))
	}
	return r, nil
}

// database is what the audit reads of PostgreSQL: the ledger's snapshot
// and, in the same transaction, how many outbox records wait for the relay.
type database struct {
	*ledger.Snapshot
	outboxRecords int64
}

// loadDatabase reads what the audit checks in one read-only REPEATABLE
// READ transaction, so every table is seen at the same instant.
func loadDatabase(ctx context.Context, pool *pgxpool.Pool, group, commandsTopic string) (*database, error) {
	db := &database{}
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		if db.Snapshot, err = (ledger.Source{Group: group, Topic: commandsTopic}).ReadSnapshot(ctx, tx); err != nil {
			return err
		}
		db.outboxRecords, err = outbox.Unpublished(ctx, tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return db, nil
}

// dedupe keeps the first record of each event_id, in topic order.
func dedupe(msgs []kafka.Message) ([]domain.Event, []kafka.Message, []string) {
	seen := make(map[string]bool)
	var evs []domain.Event
	var kept []kafka.Message
	var bad []string
	for _, m := range msgs {
		var ev domain.Event
		if err := json.Unmarshal(m.Value, &ev); err != nil || ev.EventID == "" {
			bad = append(bad, fmt.Sprintf("%s/%d@%d is not an event", m.Topic, m.Partition, m.Offset))
			continue
		}
		if seen[ev.EventID] {
			continue
		}
		seen[ev.EventID] = true
		evs = append(evs, ev)
		kept = append(kept, m)
	}
	return evs, kept, bad
}

// checkOutcomes: invariant 1 (and 6). Every command record was processed or
// dead-lettered, and every processed command has exactly one outcome event.
func checkOutcomes(db *database, commands, dlq, events []kafka.Message) Check {
	c := Check{Name: "invariant 1: every accepted command has exactly one outcome"}
	dead := make(map[string]bool)
	for _, m := range dlq {
		var part, off string
		for _, h := range m.Headers {
			switch h.Key {
			case consumers.HeaderSourcePartition:
				part = string(h.Value)
			case consumers.HeaderSourceOffset:
				off = string(h.Value)
			}
		}
		dead[part+"@"+off] = true
	}
	pending, valid := 0, 0
	distinct := make(map[string]bool)
	for _, m := range commands {
		if next, ok := db.Offsets[m.Partition]; !ok || m.Offset >= next {
			pending++
			continue
		}
		if dead[strconv.Itoa(m.Partition)+"@"+strconv.FormatInt(m.Offset, 10)] {
			continue
		}
		cmd, err := domain.DecodeCommand(m.Value)
		if err != nil {
			c.Problems = append(c.Problems, fmt.Sprintf("record %d@%d is invalid but not on the DLQ", m.Partition, m.Offset))
			continue
		}
		valid++
		distinct[cmd.CommandID] = true
		if _, ok := db.Decided[cmd.CommandID]; !ok {
			c.Problems = append(c.Problems, fmt.Sprintf("command %s (record %d@%d) has no outcome", cmd.CommandID, m.Partition, m.Offset))
		}
	}
	if pending > 0 {
		c.Problems = append(c.Problems, fmt.Sprintf("%d command records are not processed yet: let the pipeline drain, then verify", pending))
	}
	evs, _, bad := dedupe(events)
	c.Problems = append(c.Problems, bad...)
	outcomes := make(map[string]int)
	for _, ev := range evs {
		if ev.Type == domain.EventTypeHoldExpired || ev.Type == domain.EventTypeDeadLettered || ev.Type == domain.EventTypeStatementClosed {
			continue // not a decision: an expiry, a record that went to the DLQ, a statement
		}
		var d domain.OutcomeData
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			c.Problems = append(c.Problems, fmt.Sprintf("event %s has undecodable data", ev.EventID))
			continue
		}
		if d.Reason == domain.ReasonIdempotencyConflict {
			continue // the outcome of a conflicting duplicate, not of the command
		}
		outcomes[ev.CommandID]++
		if p, ok := db.Decided[ev.CommandID]; !ok {
			c.Problems = append(c.Problems, fmt.Sprintf("event %s is the outcome of unknown command %s", ev.EventID, ev.CommandID))
		} else if string(d.Status) != p.Status || string(d.Reason) != p.Reason {
			c.Problems = append(c.Problems, fmt.Sprintf("event %s says %s %s, the database %s %s", ev.EventID, d.Status, d.Reason, p.Status, p.Reason))
		}
	}
	for id := range db.Decided {
		if n := outcomes[id]; n != 1 {
			c.Problems = append(c.Problems, fmt.Sprintf("command %s has %d outcome events, want 1", id, n))
		}
	}
	c.Detail = fmt.Sprintf("%d command records (%d repeats of a command_id, absorbed), %d processed, %d dead-lettered, %d outcome events (%d more delivered again, deduped by event_id)",
		len(commands), valid-len(distinct), len(db.Decided), len(dlq), len(evs), len(events)-len(evs))
	return c
}

// checkSingleEffect: invariant 2. Each command's entries balance to zero
// in each currency, number exactly what it makes (a pair, a pair per leg
// of a transaction, a pair per fee paid; the reversal of a transaction at
// most a pair per leg), and belong to an applied command.
func checkSingleEffect(db *database, targets map[string]string) Check {
	c := Check{Name: "invariant 2: no command changed the ledger twice"}
	for id, es := range db.ByCommand {
		sums := map[string]int64{}
		for _, e := range es {
			sums[e.Currency] += e.Amount
		}
		for cur, sum := range sums {
			if sum != 0 {
				c.Problems = append(c.Problems, fmt.Sprintf("command %s: its %s entries sum to %d, want 0", id, cur, sum))
			}
		}
		if want, exact := entriesOf(db, id, targets); len(es) != want && (exact || len(es)%2 != 0 || len(es) > want) {
			c.Problems = append(c.Problems, fmt.Sprintf("command %s (%s) has %d entries, want %d", id, db.Decided[id].Type, len(es), want))
		}
		if p := db.Decided[id]; p.Status != string(domain.StatusApplied) {
			c.Problems = append(c.Problems, fmt.Sprintf("command %s has entries but its outcome is %q", id, p.Status))
		}
	}
	c.Detail = fmt.Sprintf("%d commands with postings", len(db.ByCommand))
	return c
}

// entriesOf is how many entries command id makes: a pair, a pair per leg
// of a transaction, and a pair per fee it paid. exact is false for the
// reversal of a transaction, which makes a pair per leg it gives back, so
// at most the count returned.
func entriesOf(db *database, id string, targets map[string]string) (n int, exact bool) {
	switch domain.Type(db.Decided[id].Type) {
	case domain.TypeTransaction:
		return 2*db.Legs[id] + 2*db.FeePairs[id], true
	case domain.TypeReverse:
		target, known := targets[id]
		if legs := db.Legs[target]; legs > 0 {
			return 2 * legs, false
		}
		if !known { // its record is gone from the topic (retention): a transaction's, perhaps
			return 2 * domain.MaxLegs, false
		}
	}
	return 2 + 2*db.FeePairs[id], true
}

// reverseTargets maps each reverse command among the records to the
// transfer it names.
func reverseTargets(commands []kafka.Message) map[string]string {
	out := map[string]string{}
	for _, m := range commands {
		if cmd, err := domain.DecodeCommand(m.Value); err == nil && cmd.Type == domain.TypeReverse {
			out[cmd.CommandID] = cmd.TransferID
		}
	}
	return out
}

// checkConservation: invariant 3. Per currency, balances and entries sum
// to zero.
func checkConservation(db *database) Check {
	c := Check{Name: "invariant 3: money is conserved per currency"}
	balances, entries := make(map[string]int64), make(map[string]int64)
	for _, a := range db.Totals {
		balances[a.Currency] += a.Balance
	}
	for _, es := range db.Entries {
		for _, e := range es {
			entries[e.Currency] += e.Amount
		}
	}
	for cur, sum := range balances {
		if sum != 0 || entries[cur] != 0 {
			c.Problems = append(c.Problems, fmt.Sprintf("%s: balances sum to %d and entries to %d, want 0", cur, sum, entries[cur]))
		}
	}
	c.Detail = fmt.Sprintf("%d currencies", len(balances))
	return c
}

// checkBalances: invariant 4. Balance = sum of entries, versions contiguous,
// held = pending holds, nothing below its overdraft limit; and every entry,
// transfer and leg names an account that exists (no foreign key refuses
// one since migration 0022).
func checkBalances(db *database) Check {
	c := Check{Name: "invariant 4: balances equal their entries and respect limits and holds"}
	for _, id := range slices.Sorted(maps.Keys(db.Entries)) {
		if _, ok := db.Totals[id]; !ok {
			c.Problems = append(c.Problems, fmt.Sprintf("%d entries of account %s, which does not exist", len(db.Entries[id]), id))
		}
	}
	for _, u := range db.Unnamed {
		c.Problems = append(c.Problems, u+", which does not exist")
	}
	for id, a := range db.Totals {
		var sum int64
		for i, e := range db.Entries[id] {
			sum += e.Amount
			if e.Version != int64(i+1) || e.Balance != sum {
				c.Problems = append(c.Problems, fmt.Sprintf("account %s: entry %d has version %d balance_after %d, want %d and %d", id, i, e.Version, e.Balance, i+1, sum))
				break
			}
		}
		if a.Balance != sum || a.Version != int64(len(db.Entries[id])) {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: balance %d version %d, entries sum to %d over %d", id, a.Balance, a.Version, sum, len(db.Entries[id])))
		}
		if a.Held != db.PendingHeld[id] {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: held %d, pending holds %d", id, a.Held, db.PendingHeld[id]))
		}
		if !a.External && a.Balance-a.Held < -a.Overdraft {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: available %d below -%d", id, a.Balance-a.Held, a.Overdraft))
		}
	}
	c.Detail = fmt.Sprintf("%d accounts", len(db.Totals))
	return c
}

// checkPublished: invariant 5. The outbox is drained, and the postings topic
// alone rebuilds every balance, with versions contiguous and in order.
func checkPublished(db *database, msgs []kafka.Message) Check {
	c := Check{Name: "invariant 5: every outcome is published; postings rebuild every balance in order"}
	if db.outboxRecords > 0 {
		c.Problems = append(c.Problems, fmt.Sprintf("%d outbox records are not published yet: let the relay drain, then verify", db.outboxRecords))
	}
	evs, kept, bad := dedupe(msgs)
	c.Problems = append(c.Problems, bad...)
	last := make(map[string]int64)
	rebuilt := make(map[string]int64)
	for i, ev := range evs {
		var p domain.PostingData
		if err := json.Unmarshal(ev.Data, &p); err != nil || p.AccountID == "" {
			c.Problems = append(c.Problems, fmt.Sprintf("posting %s has undecodable data", ev.EventID))
			continue
		}
		if string(kept[i].Key) != p.AccountID {
			c.Problems = append(c.Problems, fmt.Sprintf("posting %s is keyed %q, want its account %q", ev.EventID, kept[i].Key, p.AccountID))
		}
		if p.AccountVersion != last[p.AccountID]+1 {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: posting version %d follows %d", p.AccountID, p.AccountVersion, last[p.AccountID]))
		}
		last[p.AccountID] = p.AccountVersion
		rebuilt[p.AccountID] += p.Amount
		if p.BalanceAfter != rebuilt[p.AccountID] {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: version %d balance_after %d, rebuilt %d", p.AccountID, p.AccountVersion, p.BalanceAfter, rebuilt[p.AccountID]))
		}
	}
	for id, a := range db.Totals {
		if rebuilt[id] != a.Balance || last[id] != a.Version {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: the topic rebuilds balance %d at version %d, the database has %d at %d",
				id, rebuilt[id], last[id], a.Balance, a.Version))
		}
	}
	c.Detail = fmt.Sprintf("%d postings (%d after dedupe by event_id), %d accounts rebuilt", len(msgs), len(evs), len(rebuilt))
	return c
}

// checkDigests: invariant 7's chain. In PostgreSQL, each entry's digest is
// the one its fields and its account's previous entry give, and the
// account keeps its latest; on the postings topic (deduped, in order), the
// same. It names each account's first broken link: every later one is
// suspect with it. Postings published before digests existed carry none;
// the chain is carried past them on what their fields give.
func checkDigests(db *database, msgs []kafka.Message) Check {
	c := Check{Name: "invariant 7: every account's postings form an unbroken digest chain"}
	broken := func(where, acct string, version int64, got, want string) {
		c.Problems = append(c.Problems, fmt.Sprintf("%s: account %s breaks at version %d: digest %q, its fields and the link before give %s",
			where, acct, version, got, want))
	}
	links := 0
	for acct, entries := range db.Entries {
		prev := ""
		for _, e := range entries {
			want := domain.PostingDigest(prev, domain.Posting{AccountID: acct, AccountVersion: e.Version, Currency: e.Currency,
				Amount: e.Amount, BalanceAfter: e.Balance}, e.CommandID)
			if e.Digest != want {
				broken("PostgreSQL", acct, e.Version, e.Digest, want)
				prev = ""
				break
			}
			prev = want
			links++
		}
		if a, ok := db.Totals[acct]; ok && prev != "" && a.Digest != prev {
			c.Problems = append(c.Problems, fmt.Sprintf("PostgreSQL: account %s keeps digest %q, its latest entry's is %s", acct, a.Digest, prev))
		}
	}
	// The topic, as any consumer reads it: through ledgerstream.
	tr := ledgerstream.NewTracker(nil)
	broke := map[string]bool{}
	for _, m := range msgs {
		p, err := ledgerstream.Decode(m.Value)
		if err != nil {
			continue // undecodable records: invariant 5 reports them
		}
		switch v, prob := tr.Observe(p); {
		case prob != nil && !broke[p.AccountID]:
			c.Problems = append(c.Problems, "the postings topic: "+prob.String())
			broke[p.AccountID] = true
		case v == ledgerstream.New:
			links++
		}
	}
	for _, acct := range tr.Accounts() {
		a, _ := tr.Account(acct)
		if t, ok := db.Totals[acct]; ok && !broke[acct] && a.Digest != t.Digest {
			c.Problems = append(c.Problems, fmt.Sprintf("account %s: the topic's chain ends at %s, the database's at %q", acct, a.Digest, t.Digest))
		}
	}
	c.Detail = fmt.Sprintf("%d links checked, in PostgreSQL and on the topic", links)
	return c
}
