package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/internal/kafkatest"
)

// commandStatus is GET /v1/commands/{id}.
type commandStatus struct {
	CommandID, Type, Status, Reason, Detail string
	SubmittedBy                             string `json:"submitted_by"`
}

// TestDeadLetteredCommandsAreOutcomesProducersSee: a record whose command
// id can be read but that goes to the DLQ is answered dead_lettered by
// GET /v1/commands/{id}, with its reason, and published as a
// command.dead_lettered event; a dlq replay that decides it replaces the
// status and keeps the API key that first submitted it.
func TestDeadLetteredCommandsAreOutcomesProducersSee(t *testing.T) {
	p := startPipelineWith(t, 1)
	ctx := context.Background()
	// A trigger stands in for a record PostgreSQL refuses for good (the
	// worker dead-letters it as apply_failed); dropping it is the fix that
	// makes a replay succeed.
	_, err := p.db.Pool.Exec(ctx, `
		CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.account_id = 'poison' THEN RAISE EXCEPTION 'poisoned entry' USING ERRCODE = 'P0001'; END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT ON entries FOR EACH ROW EXECUTE FUNCTION refuse_poison();`)
	if err != nil {
		t.Fatalf("create trigger: %v", err)
	}
	open, deposit, invalid := uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String(), uuid.Must(uuid.NewV7()).String()
	for _, body := range []string{
		fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"poison","currency":"EUR"}`, open),
		fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"poison","amount":5,"currency":"EUR"}`, deposit),
	} {
		if code, resp := p.post(t, "/v1/commands", body); code != http.StatusAccepted {
			t.Fatalf("POST %s = %d %v", body, code, resp)
		}
	}
	// Straight onto the topic: a command id, a bad amount.
	p.produce(t, "poison", fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"poison","amount":"5","currency":"EUR"}`, invalid))

	await := func(id, status string) commandStatus {
		t.Helper()
		var c commandStatus
		eventually(t, "command "+id+" is "+status, func() bool {
			return p.get(t, "/v1/commands/"+id, &c) == http.StatusOK && c.Status == status
		})
		return c
	}
	if c := await(deposit, "dead_lettered"); c.Reason != "apply_failed" || c.Type != "deposit" || !strings.Contains(c.Detail, "poisoned entry") {
		t.Errorf("GET the deposit PostgreSQL refused = %+v, want dead_lettered apply_failed with the detail", c)
	}
	if c := await(invalid, "dead_lettered"); c.Reason != "invalid_command" || !strings.Contains(c.Detail, "/amount") {
		t.Errorf("GET the invalid record = %+v, want dead_lettered invalid_command naming /amount", c)
	}

	// One command.dead_lettered event for each, valid against its schema.
	dead := map[string]domain.DeadLetteredData{}
	for _, ev := range p.events(t, p.topics.Events, 3) {
		if ev.Type != domain.EventTypeDeadLettered {
			continue
		}
		var d domain.DeadLetteredData
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		dead[ev.CommandID] = d
		if ev.CommandID == deposit && ev.SubmittedBy != p.keyID {
			t.Errorf("dead_lettered event of the deposit: submitted_by %q, want %q", ev.SubmittedBy, p.keyID)
		}
	}
	if dead[deposit].Reason != "apply_failed" || dead[invalid].Reason != "invalid_command" || dead[invalid].SourceOffset != 2 {
		t.Errorf("command.dead_lettered events = %+v, want the deposit (apply_failed) and the record at offset 2 (invalid_command)", dead)
	}

	// The fix, then the replay: the deposit is decided, under the key that
	// first submitted it.
	if _, err := p.db.Pool.Exec(ctx, `DROP TRIGGER refuse_poison ON entries`); err != nil {
		t.Fatal(err)
	}
	dlqCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var ref string
	for _, m := range p.kc.ReadAll(dlqCtx, t, p.topics.DLQ, 2) {
		if kafkatest.Header(m, domain.SubmittedByHeader) == p.keyID {
			ref = fmt.Sprintf("%d@%d", m.Partition, m.Offset)
		}
	}
	if ref == "" {
		t.Fatalf("no DLQ record carries %s=%s: a replay would lose who sent the deposit", domain.SubmittedByHeader, p.keyID)
	}
	var out bytes.Buffer
	err = run(ctx, []string{"dlq", "replay", "--records", ref, "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--commands-topic", p.topics.Commands, "--dlq-topic", p.topics.DLQ, "--log-level", "warn"},
		&env{stdout: &out, stderr: io.Discard, lookup: testLookup})
	if err != nil {
		t.Fatalf("dlq replay %s = %v: %s", ref, err, out.String())
	}
	await(deposit, "applied")
	var by string
	if err := p.db.Pool.QueryRow(ctx, `SELECT coalesce(submitted_by, '') FROM processed_commands WHERE command_id = $1`, deposit).Scan(&by); err != nil {
		t.Fatal(err)
	}
	if by != p.keyID {
		t.Errorf("the replayed deposit was decided as submitted by %q, want the original key %q", by, p.keyID)
	}
	var acct struct{ Balance int64 }
	p.get(t, "/v1/accounts/poison", &acct)
	if acct.Balance != 5 {
		t.Errorf("balance after the replay = %d, want 5", acct.Balance)
	}
	p.verify(t)
}
