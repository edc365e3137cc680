package outbox_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running: every
// goroutine the pipeline starts must have an owner that waits for it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
