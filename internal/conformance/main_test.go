package conformance

import (
	"os"
	"testing"
)

// TestMain runs the claims' and the attacks' suite with the writer's
// memory verified (docs/architecture.md, "The writer's memory"): every
// value a SQLite write takes from it is read again, and a difference fails
// the write, so a step that changed a row without saying so to the memory
// fails here, by hand as in CI. SHARESPOT_VERIFY_MEMO=0 runs it as a
// server runs.
func TestMain(m *testing.M) {
	if _, set := os.LookupEnv("SHARESPOT_VERIFY_MEMO"); !set {
		os.Setenv("SHARESPOT_VERIFY_MEMO", "1")
	}
	os.Exit(m.Run())
}
