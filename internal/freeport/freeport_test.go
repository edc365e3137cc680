package freeport

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestAddrNeverRepeatsAndStaysBelowTheEphemeralRange(t *testing.T) {
	low := ephemeralLow("/proc/sys/net/ipv4/ip_local_port_range")
	seen := map[string]bool{}
	for range 300 {
		addr, err := Addr()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if low-lowest >= 1000 && (port < lowest || port >= low) {
			t.Fatalf("%s outside [%d, %d)", addr, lowest, low)
		}
	}
}

func TestAddrFromSkipsHeldAndGivenPorts(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := held.Addr().(*net.TCPAddr).Port
	given1, err := Addr()
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(given1)
	givenPort, _ := strconv.Atoi(p)
	free, err := kernelPort()
	if err != nil {
		t.Fatal(err)
	}
	got, err := addrFrom(candidates(t, heldPort, givenPort, free))
	if err != nil {
		t.Fatal(err)
	}
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(free)); got != want {
		t.Fatalf("addrFrom = %s, want %s (the held %d and the given %d skipped)", got, want, heldPort, givenPort)
	}
}

func TestEphemeralLow(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		body string
		want int
	}{{"32768\t60999\n", 32768}, {"40000 50000", 40000}, {"", 32768}, {"x y", 32768}} {
		p := filepath.Join(dir, "range")
		if err := os.WriteFile(p, []byte(c.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := ephemeralLow(p); got != c.want {
			t.Errorf("ephemeralLow(%q) = %d, want %d", c.body, got, c.want)
		}
	}
	if got := ephemeralLow(filepath.Join(dir, "missing")); got != 32768 {
		t.Errorf("missing file: %d, want 32768", got)
	}
}

// TestAnotherProcessReservationIsSkipped: a port whose lock file another
// process holds is not handed out, even though it binds. The other process
// is this test's child, holding the lock until told to go.
func TestAnotherProcessReservationIsSkipped(t *testing.T) {
	if os.Getenv("FREEPORT_HOLD") != "" {
		port, _ := strconv.Atoi(os.Getenv("FREEPORT_HOLD"))
		if !reserve(port) {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		var b [1]byte
		os.Stdin.Read(b[:]) // until the parent closes our stdin
		os.Exit(0)
	}
	free, err := kernelPort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAnotherProcessReservationIsSkipped$")
	cmd.Env = append(os.Environ(), "FREEPORT_HOLD="+strconv.Itoa(free))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line := make([]byte, 5)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "held\n" {
		t.Fatalf("the child did not hold the port: %q %v", line, err)
	}
	other, err := kernelPort()
	if err != nil {
		t.Fatal(err)
	}
	got, err := addrFrom(candidates(t, free, other))
	if err != nil {
		t.Fatal(err)
	}
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(other)); got != want {
		t.Fatalf("addrFrom = %s, want %s: port %d is reserved by another process", got, want, free)
	}
}

// candidates offers ports to addrFrom in order, failing the test if it
// asks for more.
func candidates(t *testing.T, ports ...int) func() (int, error) {
	return func() (int, error) {
		if len(ports) == 0 {
			t.Fatal("ran out of candidates")
		}
		p := ports[0]
		ports = ports[1:]
		return p, nil
	}
}
