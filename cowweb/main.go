// Command cowweb is the sample app of rollout-lab.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	terminate := make(chan struct{})
	go func() {
		<-signals
		close(terminate)
	}()
	err := app.NewCommand(os.Stdout, terminate).Execute()
	if errors.Is(err, app.ErrExitImmediately) {
		// Die of SIGTERM as cowweb-go does when it does not handle the signal, so the exit status reads the same.
		signal.Reset(syscall.SIGTERM)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		time.Sleep(time.Second) // the signal is delivered asynchronously; exit with its status only if it never is
		os.Exit(128 + int(syscall.SIGTERM))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cowweb:", err)
		os.Exit(1)
	}
}
