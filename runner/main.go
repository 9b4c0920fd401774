// Command runner runs rollout-lab plans.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rollout-lab/rollout-lab/runner/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Streams{Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}
