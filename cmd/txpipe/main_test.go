package main

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/txpipe/txpipe/domain/sealing"
)

// TestMain gives every pipeline the tests start, in this process or as a
// child, a fresh keyring for account metadata (TXPIPE_METADATA_KEYS), and
// fails the package if a test leaves a goroutine running: every goroutine
// the pipeline starts must have an owner that waits for it.
func TestMain(m *testing.M) {
	key, err := sealing.NewKey("test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv(metadataKeysEnv, key)
	goleak.VerifyTestMain(m)
}

// metadataKeysEnv is the one setting the tests' in-process runs take from
// the environment (testLookup); every other setting is a flag.
const metadataKeysEnv = "TXPIPE_METADATA_KEYS"

func testLookup(name string) (string, bool) {
	if name == metadataKeysEnv {
		return os.LookupEnv(name)
	}
	return "", false
}
