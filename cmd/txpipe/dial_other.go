//go:build !linux

package main

import (
	"syscall"
	"time"
)

// tcpUserTimeout is Linux's alone; elsewhere the keepalives bound an idle
// connection only.
func tcpUserTimeout(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
