//go:build unix

package main

import "syscall"

// syncDisks writes every dirty page of this host to disk (sync(2)).
func syncDisks() { syscall.Sync() }
