package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestHostileRequestsGetClearAnswers throws a corpus of hostile requests at
// the running API: each gets its documented client-error status as
// problem+json (never a 5xx), nothing reaches Kafka or the ledger, and the
// service stays healthy and keeps working.
func TestHostileRequestsGetClearAnswers(t *testing.T) {
	p := startPipeline(t)
	dep := func(amount string) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"deposit","account_id":"h","currency":"EUR","amount":%s}`, uuid.Must(uuid.NewV7()).String(), amount)
	}
	open := func(account string) string {
		return fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":%s,"currency":"EUR"}`, uuid.Must(uuid.NewV7()).String(), account)
	}
	nested := strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000)
	cases := []struct {
		name, method, path, body string
		status                   int
	}{
		{"oversized command", "POST", "/v1/commands", `{"pad":"` + strings.Repeat("x", 70<<10) + `"}`, 413},
		{"oversized batch", "POST", "/v1/commands/batch", `{"commands":["` + strings.Repeat("x", 9<<20) + `"]}`, 413},
		{"deeply nested metadata", "POST", "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"h","currency":"EUR","metadata":%s}`, uuid.Must(uuid.NewV7()).String(), nested[:60000]), 400},
		{"deeply nested batch", "POST", "/v1/commands/batch", `{"commands":[` + nested + `]}`, 400},
		{"huge amount", "POST", "/v1/commands", dep("99999999999999999999999999999"), 400},
		{"float overflow amount", "POST", "/v1/commands", dep("1e309"), 400},
		{"negative amount", "POST", "/v1/commands", dep("-100"), 400},
		{"zero amount", "POST", "/v1/commands", dep("0"), 400},
		{"non-UTF-8 account id", "POST", "/v1/commands", open("\"h\xff\xfe\""), 400},
		{"NUL in account id", "POST", "/v1/commands", open(`"h\u0000"`), 400},
		{"SQL in account id", "POST", "/v1/commands", open(`"h'; DROP TABLE accounts;--"`), 400},
		{"path traversal in account id", "POST", "/v1/commands", open(`"../../etc/passwd"`), 400},
		{"SQL in a read", "GET", "/v1/accounts/h'%20OR%20'1'='1", "", 400},
		{"path traversal in a read", "GET", "/v1/accounts/..%2F..%2Fetc%2Fpasswd", "", 400},
		{"traversal in a command id", "GET", "/v1/commands/..%2F..%2Fetc%2Fpasswd", "", 400},
		{"SQL in a transfer id", "GET", "/v1/transfers/1%20OR%201=1", "", 400},
		{"unknown route", "GET", "/v1/../../admin", "", 404},
		{"wrong method", "DELETE", "/v1/commands", "", 405},
	}
	for _, c := range cases {
		status, body, hdr := p.request(t, c.method, c.path, c.body, p.key)
		if status != c.status {
			t.Errorf("%s: %s %s = %d (%v), want %d", c.name, c.method, c.path, status, body["detail"], c.status)
			continue
		}
		if ct := hdr.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%s: Content-Type %q, want application/problem+json", c.name, ct)
		}
		if d, _ := body["detail"].(string); strings.Contains(d, "SQLSTATE") || strings.Contains(d, "pgx") || strings.Contains(d, "goroutine") {
			t.Errorf("%s: the detail leaks internals: %q", c.name, d)
		}
	}

	// Request smuggling: ambiguous framing is refused or resolved the one
	// way RFC 9112 allows (chunked wins over Content-Length), never into a
	// command; the hidden deposit must not reach Kafka.
	auth := "Authorization: Bearer " + p.key + "\r\n"
	hidden := dep("7")
	for _, c := range []struct {
		raw    string
		status int
	}{
		{"POST /v1/commands HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: " + fmt.Sprint(len(hidden)) + "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden, 400},
		{"POST /v1/commands HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"POST /v1/commands HTTP/1.1\r\nHost: x\r\n" + auth + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
	} {
		if status := rawStatus(t, strings.TrimPrefix(p.api, "http://"), c.raw); status != c.status {
			t.Errorf("smuggling attempt %q answered %d, want %d", c.raw, status, c.status)
		}
	}

	ctx := context.Background()
	if n := p.kc.Count(ctx, t, p.topics.Commands); n != 0 {
		t.Errorf("commands topic holds %d records after hostile requests, want 0", n)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(p.admin + path)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s after the corpus: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	id := uuid.Must(uuid.NewV7()).String()
	if status, body := p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"h","currency":"EUR"}`, id)); status != http.StatusAccepted {
		t.Fatalf("a valid command after the corpus = %d %v", status, body)
	}
	if status, _ := p.awaitOutcome(t, id); status != "applied" {
		t.Errorf("the valid command = %s, want applied", status)
	}
}

// rawStatus writes raw to addr and returns the status of the first answer.
func rawStatus(t *testing.T, addr, raw string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to %q: %v", raw, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestServerLimitsHeadersAndSlowClients: a header block over the limit is
// refused with 431, and a client that never finishes its headers (slow
// loris) is disconnected by the server instead of holding a connection.
func TestServerLimitsHeadersAndSlowClients(t *testing.T) {
	p := startPipeline(t)
	addr := strings.TrimPrefix(p.api, "http://")
	big := "GET /v1/accounts/h HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"
	if status := rawStatus(t, addr, big); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB of headers answered %d, want 431", status)
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /v1/accounts/h HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	// The server gives up on the headers (ReadHeaderTimeout, 5 s); the test
	// waits up to a minute for it, so no speed is asserted.
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 1024)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue // e.g. a 408 the server sends before closing
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the server kept a connection with unfinished headers open for a minute")
		}
		break // closed by the server
	}
}
