package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/txpipe/txpipe/domain"
	"github.com/txpipe/txpipe/domain/sealing"
)

// TestAccountMetadataIsSealedAtRest opens an account whose metadata holds a
// canary and shows the canary is readable only through the API, by a key
// with ledger:read: not in the accounts row, not in a pg_dump of the
// database, not in the outcome events (the outbox's records), not in the
// log. Then it rotates to a new key, sealing a row left in plaintext from
// before sealing on the way, and reads both back under the new key alone.
func TestAccountMetadataIsSealedAtRest(t *testing.T) {
	p := startPipeline(t)
	canary := "canary-personal-data-" + randomHex(t)
	legacyCanary := "canary-legacy-plaintext-" + randomHex(t)
	openID := uuid.Must(uuid.NewV7()).String()
	open := fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"ada","currency":"EUR","metadata":{"name":%q}}`, openID, canary)
	if code, resp := p.post(t, "/v1/commands", open); code != http.StatusAccepted {
		t.Fatalf("POST open_account = %d %v", code, resp)
	}
	if status, reason := p.awaitOutcome(t, openID); status != "applied" {
		t.Fatalf("open_account = %s %s, want applied", status, reason)
	}
	// The same command id with other metadata: an idempotency conflict,
	// whose event shows what was sent, sealed too.
	conflict := strings.Replace(open, canary, canary+"-second", 1)
	if code, resp := p.post(t, "/v1/commands", conflict); code != http.StatusAccepted {
		t.Fatalf("POST conflicting open_account = %d %v", code, resp)
	}

	// A deposit's metadata stays with its transfer, sealed the same way.
	transferCanary := "canary-transfer-metadata-" + randomHex(t)
	depositID := uuid.Must(uuid.NewV7()).String()
	deposit := fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"ada","amount":5,"currency":"EUR","reference":"r-1","metadata":{"name":%q}}`,
		depositID, transferCanary)
	if code, resp := p.post(t, "/v1/commands", deposit); code != http.StatusAccepted {
		t.Fatalf("POST deposit = %d %v", code, resp)
	}
	if status, reason := p.awaitOutcome(t, depositID); status != "applied" {
		t.Fatalf("deposit = %s %s, want applied", status, reason)
	}

	// The API opens it for a ledger:read key, and only for one.
	if got := transferName(t, p, p.api, depositID, p.key); got != transferCanary {
		t.Errorf("GET /v1/transfers/%s metadata.name = %q, want the canary", depositID, got)
	}
	if got := accountName(t, p, p.api, "ada", p.key); got != canary {
		t.Errorf("GET /v1/accounts/ada metadata.name = %q, want the canary", got)
	}
	writer, _ := createKey(t, p.db.URL, "writer", "commands:write")
	code, body, _ := p.request(t, http.MethodGet, "/v1/accounts/ada", "", writer)
	if code != http.StatusForbidden || strings.Contains(fmt.Sprint(body), canary) {
		t.Errorf("GET with a commands:write key = %d %v, want 403 without the metadata", code, body)
	}

	// The row holds it sealed under the active key.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var row, keyID string
	if err := conn.QueryRow(ctx, `SELECT row_to_json(a)::text, metadata_key_id FROM accounts a WHERE account_id = 'ada'`).Scan(&row, &keyID); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(row, canary) || keyID != "test" {
		t.Errorf("accounts row = %s (key %q), want the metadata sealed under key test", row, keyID)
	}
	if err := conn.QueryRow(ctx, `SELECT row_to_json(t)::text, metadata_key_id FROM transfers t WHERE transfer_id = $1`, depositID).Scan(&row, &keyID); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(row, transferCanary) || keyID != "test" {
		t.Errorf("transfers row = %s (key %q), want the metadata sealed under key test", row, keyID)
	}

	// The outcome events, which are the outbox's rows as published: sealed,
	// and they open with the key to the metadata sent.
	evs := p.events(t, p.topics.Events, 3)
	keyring, err := sealing.Parse(os.Getenv(metadataKeysEnv))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{canary, canary + "-second", transferCanary} {
		aad := sealing.MetadataAAD("ada")
		if i == 2 {
			aad = sealing.TransferMetadataAAD(depositID)
		}
		raw, _ := json.Marshal(evs[i])
		if bytes.Contains(raw, []byte(want)) {
			t.Errorf("event %s shows the metadata: %s", evs[i].Type, raw)
		}
		var data struct {
			Command struct {
				Metadata       json.RawMessage `json:"metadata"`
				MetadataSealed *domain.Sealed  `json:"metadata_sealed"`
			} `json:"command"`
		}
		if err := json.Unmarshal(evs[i].Data, &data); err != nil || data.Command.MetadataSealed == nil || data.Command.Metadata != nil {
			t.Fatalf("event %s command = %s (%v), want metadata_sealed only", evs[i].Type, evs[i].Data, err)
		}
		md, err := keyring.Open(data.Command.MetadataSealed.KeyID, data.Command.MetadataSealed.Ciphertext, aad)
		if err != nil || !strings.Contains(string(md), want) {
			t.Errorf("event %s metadata opens to %s (%v), want the name %s", evs[i].Type, md, err, want)
		}
	}
	if evs[1].Type != "open_account.rejected" {
		t.Errorf("second event %s, want the conflict's open_account.rejected", evs[1].Type)
	}
	p.validateSchemas(t) // metadata_sealed is in the published schema

	// A row from before sealing, still in plaintext.
	if _, err := conn.Exec(ctx, `INSERT INTO accounts (account_id, currency, status, metadata)
		VALUES ('legacy', 'EUR', 'active', jsonb_build_object('name', $1::text))`, legacyCanary); err != nil {
		t.Fatal(err)
	}
	dump := pgDump(t, p.db.URL)
	if !strings.Contains(dump, "ada") || !strings.Contains(dump, legacyCanary) {
		t.Fatal("control: the dump lacks the account or the plaintext row; it cannot show what it hides")
	}
	if strings.Contains(dump, canary) || strings.Contains(dump, transferCanary) {
		t.Error("pg_dump shows the sealed metadata")
	}

	// Rotation: a keyring lacking the old key seals the plaintext but
	// leaves the old key's values alone, and says so; with both keys every
	// value moves under the new one.
	next, err := sealing.NewKey("next")
	if err != nil {
		t.Fatal(err)
	}
	out, err := rotate(p.db.URL, next)
	if !strings.Contains(out, "left 2 under test") || !strings.Contains(out, "re-sealed 1 from plaintext") || err == nil {
		t.Errorf("rotate without the old key: %v\n%s", err, out)
	}
	out, err = rotate(p.db.URL, next+","+os.Getenv(metadataKeysEnv))
	if err != nil || !strings.Contains(out, "re-sealed 2 from test") || strings.Contains(out, "plaintext") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	if out, err := rotate(p.db.URL, next); err != nil || strings.Contains(out, "re-sealed") {
		t.Errorf("a second rotate found work: %v\n%s", err, out)
	}
	if dump := pgDump(t, p.db.URL); strings.Contains(dump, canary) || strings.Contains(dump, legacyCanary) || strings.Contains(dump, transferCanary) {
		t.Error("pg_dump after the rotation shows metadata")
	}

	// An ingest holding only the new key reads both.
	api, _, logs := runServing(t, []string{"ingest", "--database-url", p.db.URL, "--kafka-brokers", strings.Join(p.kc.Brokers, ","),
		"--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--commands-topic", p.topics.Commands,
		"--metadata-keys", next, "--log-level", "debug"})
	for id, want := range map[string]string{"ada": canary, "legacy": legacyCanary} {
		if got := accountName(t, p, "http://"+api, id, p.key); got != want {
			t.Errorf("after rotation, %s's metadata.name = %q, want %q", id, got, want)
		}
	}
	if got := transferName(t, p, "http://"+api, depositID, p.key); got != transferCanary {
		t.Errorf("after rotation, the deposit's metadata.name = %q, want the canary", got)
	}

	for name, l := range map[string]string{"pipeline": p.logs(), "ingest": logs()} {
		for _, secret := range []string{canary, legacyCanary, transferCanary, keyMaterial(os.Getenv(metadataKeysEnv)), keyMaterial(next)} {
			if strings.Contains(l, secret) {
				t.Errorf("the %s log shows metadata or key material", name)
			}
		}
	}
}

// accountName reads an account through api with key and returns its
// metadata's name.
func accountName(t *testing.T, p *pipeline, api, id, key string) string {
	t.Helper()
	return metadataName(t, api+"/v1/accounts/"+id, key)
}

// transferName reads a transfer through api with key and returns its
// metadata's name.
func transferName(t *testing.T, p *pipeline, api, id, key string) string {
	t.Helper()
	return metadataName(t, api+"/v1/transfers/"+id, key)
}

func metadataName(t *testing.T, u, key string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, b := exchange(t, req, "")
	var acct struct {
		Metadata struct{ Name string } `json:"metadata"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %d %s", u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, &acct); err != nil {
		t.Fatal(err)
	}
	return acct.Metadata.Name
}

func rotate(dbURL, keys string) (string, error) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"metadata-key", "rotate", "--database-url", dbURL, "--metadata-keys", keys},
		&env{stdout: &out, stderr: io.Discard, lookup: testLookup})
	return out.String(), err
}

// pgDump is what `pg_dump` of the database holds.
func pgDump(t *testing.T, dbURL string) string {
	t.Helper()
	out, err := exec.Command("pg_dump", "--data-only", dbURL).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("pg_dump: %v: %s", err, exit.Stderr)
	}
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	return string(out)
}

// keyMaterial is the base64 key of a one-key keyring setting.
func keyMaterial(keys string) string {
	_, k, _ := strings.Cut(strings.Split(keys, ",")[0], ":")
	return k
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
