// Command runner runs rollout-lab plans.
package main

import (
	"context"
	"os"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/runner/cli"
)

func main() {
	// The lab runs the cowweb image as this same binary, so an installed runner needs nothing else.
	if len(os.Args) > 1 && os.Args[1] == cli.CowwebSubcommand {
		os.Exit(app.Main(os.Args[2:], os.Stdout, os.Stderr))
	}
	// Every lab node's kube-proxy is this binary too, in the node's network namespace.
	proxymain.DispatchIfAsked()
	ctx, stop := cli.SignalContext(context.Background())
	code := cli.Main(ctx, os.Args[1:], cli.Streams{Out: os.Stdout, Err: os.Stderr, In: os.Stdin})
	stop()
	os.Exit(code)
}
