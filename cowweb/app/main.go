package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Main runs the cowweb command line with the process's signals and returns the exit code. In immediate mode it
// dies of SIGTERM, as a server that does not handle the signal does; the upstream flavor exits 0 as v1.1.1 does.
func Main(args []string, stdout, stderr io.Writer) int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	terminate := make(chan struct{})
	go func() {
		<-signals
		close(terminate)
	}()
	cmd := NewCommand(stdout, terminate)
	cmd.SetArgs(args)
	err := cmd.Execute()
	if errors.Is(err, ErrExitImmediately) && Flavor == FlavorUpstream {
		return 0 // v1.1.1 handles SIGTERM and returns from main without shutting the server down
	}
	if errors.Is(err, ErrExitImmediately) {
		signal.Reset(syscall.SIGTERM)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		time.Sleep(time.Second) // the signal is delivered asynchronously; exit with its status only if it never is
		return 128 + int(syscall.SIGTERM)
	}
	if err != nil {
		fmt.Fprintln(stderr, "cowweb:", err)
		return 1
	}
	return 0
}
