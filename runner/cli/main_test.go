package cli

import (
	"os"
	"testing"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
)

// TestMain lets this test binary play the runner's hidden cowweb subcommand, which the lab runs as the cowweb image.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == CowwebSubcommand {
		os.Exit(app.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
