package main

import (
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
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
		id := uuid.Must(uuid.NewV7()).String()
		p.post(t, "/v1/commands", fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"st-%s","currency":"EUR"}`, id, id[24:]))
	}
	eventually(t, "the processed rate on /status moves", func() bool {
		m := processed.FindStringSubmatch(page())
		return m != nil && m[1] != first[1] && m[1] != "0.0" && m[1] != "–"
	})

	// A real browser renders it: headless Chromium (Debian's chromium)
	// loads the page, its DOM holds the figures, and a screenshot is kept.
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium not found; .ci/run installs Debian's chromium")
		}
		t.Skip("chromium not found: apt-get install chromium")
	}
	profile := t.TempDir()
	browser := func(args ...string) []byte {
		t.Helper()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir=" + profile}
		cmd := exec.Command(chromium, append(append(base, args...), p.admin+"/status")...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := string(browser("--dump-dom"))
	if !strings.Contains(dom, "txpipe status") || processed.FindStringSubmatch(dom) == nil {
		t.Errorf("Chromium's DOM of /status lacks the title or the figures:\n%s", tail(dom, 2000))
	}
	dir := os.Getenv("TXPIPE_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", ".cache", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(dir, "status.png"))
	if err != nil {
		t.Fatal(err)
	}
	browser("--screenshot="+shot, "--window-size=1000,900")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() != 1000 {
		t.Fatalf("screenshot %s is not a 1000-px-wide PNG: %v", shot, err)
	}
	t.Logf("status page screenshot: %s", shot)
}
