package main

import (
	"syscall"
	"time"
)

// tcpUserTimeout sets TCP_USER_TIMEOUT on a socket: how long transmitted
// data may stay unacknowledged before the kernel gives up the connection.
func tcpUserTimeout(d time.Duration) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
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
