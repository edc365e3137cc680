// Package freeport hands out loopback addresses for processes a test or a
// benchmark starts and that bind the address themselves.
//
// Listening on 127.0.0.1:0, closing, and passing the port on races: until
// the child binds it, the kernel may give the same port to the next
// 127.0.0.1:0 or to an outgoing connection, and the child then fails with
// "address already in use" (CI saw the relay's admin port taken by
// ingest's API port, both picked this way). So Addr picks below the
// kernel's ephemeral range, where the kernel never assigns a port by
// itself, checks the port can be bound now, never hands the same port out
// twice in one process, and reserves it against the other processes that
// use this package (test binaries run in parallel, loadgen) with a lock
// file held until the process exits.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port Addr considers; the ones below it are left to
// services with fixed ports (Kafka 9092 and 19091–19193, PostgreSQL 5433).
const lowest = 20000

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Addr returns "127.0.0.1:port" for a port that is free now, outside the
// kernel's ephemeral range when that range leaves room below it, and not
// returned before by this process.
func Addr() (string, error) {
	top := ephemeralLow("/proc/sys/net/ipv4/ip_local_port_range")
	if top-lowest < 1000 {
		// No room below the range: let the kernel pick and rely on the
		// registry alone.
		return addrFrom(kernelPort)
	}
	return addrFrom(func() (int, error) { return lowest + rand.IntN(top-lowest), nil })
}

// addrFrom takes candidates from next until one is neither given before
// nor bound by anyone now.
func addrFrom(next func() (int, error)) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 200 {
		port, err := next()
		if err != nil {
			return "", err
		}
		if given[port] {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		ln.Close()
		given[port] = true // taken or not, never tried again by this process
		if !reserve(port) {
			continue // another process of ours has it
		}
		return addr, nil
	}
	return "", fmt.Errorf("no free loopback port found in 200 tries")
}

// ephemeralLow is the first port of the kernel's ephemeral range, read
// from path; 32768 (Linux's default) when it cannot be read.
func ephemeralLow(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return n
}

func kernelPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
