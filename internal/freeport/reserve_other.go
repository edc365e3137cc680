//go:build !unix

package freeport

// reserve has no cross-process lock here: the bind check and the
// in-process registry alone.
func reserve(int) bool { return true }
