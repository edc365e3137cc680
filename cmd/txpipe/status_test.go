package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/txpipe/txpipe/internal/uuidv7"
)

// TestStatusPageShowsLiveNumbers loads /status before and under load: it
// renders the readiness of every dependency, and the figures move.
func TestStatusPageShowsLiveNumbers(t *testing.T) {
	p := startPipeline(t)
	page := func() string {
		resp, err := http.Get(p.admin + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("/status = %d %s, want 200 HTML", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return string(b)
	}
	processed := regexp.MustCompile(`data-name="commands processed /s">([0-9.–]+)<`)
	before := page()
	for _, want := range []string{"<h1>txpipe status</h1>", `<td>postgres</td><td class="ok">ok</td>`, `<td>kafka</td><td class="ok">ok</td>`, "<svg"} {
		if !strings.Contains(before, want) {
			t.Errorf("/status lacks %s", want)
		}
	}
	first := processed.FindStringSubmatch(before)
	if first == nil {
		t.Fatalf("/status has no 'commands processed' figure:\n%s", before)
	}
	for range 20 {
		id := uuidv7.New()
		p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"st-%s","currency":"EUR"}`, id, id[24:]))
	}
	eventually(t, "the processed rate on /status moves", func() bool {
		m := processed.FindStringSubmatch(page())
		return m != nil && m[1] != first[1] && m[1] != "0.0" && m[1] != "–"
	})
}
