package cli

import (
	"context"
	"os"
	"testing"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
)

// TestMain lets this test binary play the runner's hidden subcommands the lab runs: kube-proxy on every node, and
// as images cowweb and the in-cluster load worker (the runner's image).
func TestMain(m *testing.M) {
	proxymain.DispatchIfAsked() // the lab nodes' kube-proxies
	if len(os.Args) > 1 && os.Args[1] == CowwebSubcommand {
		os.Exit(app.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	if os.Getenv(signalHelperEnv) != "" {
		signalHelper()
	}
	if os.Getenv(childRunnerEnv) != "" {
		os.Exit(Main(context.Background(), os.Args[1:], Streams{Out: os.Stdout, Err: os.Stderr}))
	}
	if len(os.Args) > 1 && os.Args[1] == WorkerSubcommand {
		os.Exit(Main(context.Background(), os.Args[1:], Streams{Out: os.Stdout, Err: os.Stderr}))
	}
	os.Exit(m.Run())
}

// childRunnerEnv makes the test binary a runner: tests start one as a child process to kill it.
const childRunnerEnv = "ROLLOUT_LAB_TEST_RUNNER"
