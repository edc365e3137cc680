//go:build unix

package freeport

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// held keeps the reservation files open, and so locked, for the life of
// the process.
var held []*os.File

// reserve takes port for this process across processes: an exclusive
// flock on a file named for it under the temporary directory, kept until
// the process exits (the kernel drops the lock then, however it ends).
// Another test binary or loadgen picking the same port at the same moment
// fails to lock it and picks another. A reservation that cannot be made
// (no temporary directory) is no reason to refuse the port: it falls back
// to the bind check alone.
func reserve(port int) bool {
	dir := filepath.Join(os.TempDir(), "txpipe-freeport")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	held = append(held, f)
	return true
}
