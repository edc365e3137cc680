package main

import (
	"strings"
	"syscall"
	"time"
)

// tcpUserTimeout sets TCP_USER_TIMEOUT on a TCP socket: how long
// transmitted data may stay unacknowledged before the kernel gives up the
// connection. A Unix socket (host=/var/run/postgresql) has no such option.
func tcpUserTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeoutOpt, int(d.Milliseconds()))
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// tcpUserTimeoutOpt is TCP_USER_TIMEOUT (linux/tcp.h), which package
// syscall does not name.
const tcpUserTimeoutOpt = 0x12
