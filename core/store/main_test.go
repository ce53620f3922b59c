package store

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the package's tests with the recode mode TPDE_STORE_RECODE
// names ("inline" when unset), so that CI runs every store test with the
// re-code inside the add and again with it in the background.
func TestMain(m *testing.M) {
	if r := os.Getenv("TPDE_STORE_RECODE"); r != "" {
		if r != RecodeInline && r != RecodeBackground {
			fmt.Fprintf(os.Stderr, "TPDE_STORE_RECODE=%q: must be %q or %q\n", r, RecodeInline, RecodeBackground)
			os.Exit(2)
		}
		defaultRecode = r
	}
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}
