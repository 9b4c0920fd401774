// Package cli is the runner's command line: flags and output only, the work is done by the packages it calls.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of the runner.
const (
	ExitOK = 0
	// ExitError is any failure: bad flags, a plan that does not validate, a run that could not complete.
	ExitError = 1
	// ExitExpectationFailed: the run completed and its reports are written, but a case broke one of the plan's
	// expectations (expect.maxErrors, expect.maxErrorRate).
	ExitExpectationFailed = 3
)

// Streams are where the runner writes.
type Streams struct {
	Out, Err io.Writer
	// In answers confirmations; only a terminal is asked (nil: never).
	In io.Reader
}

// Main runs the runner with args (without the program name) and returns its exit code.
func Main(ctx context.Context, args []string, streams Streams) int {
	root := NewRootCommand(streams)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var exit *exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	fmt.Fprintln(streams.Err, "error:", err)
	return ExitError
}

// exitError ends the command with a code after the command has already reported why.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// detachComponentFlags keeps the flags that imported Kubernetes components register on pflag's process-wide set
// (component-base's --version, "--version=vX.Y.Z sets the reported version", among them) off the runner's command
// line: cobra adds that set to every root command. The lab starts its components through their own flag sets.
var detachComponentFlags sync.Once

// NewRootCommand builds the command tree.
func NewRootCommand(streams Streams) *cobra.Command {
	detachComponentFlags.Do(func() { pflag.CommandLine = pflag.NewFlagSet("runner", pflag.ContinueOnError) })
	var verbose bool
	root := &cobra.Command{
		Use:     "runner",
		Version: Version,
		Short:   "Prove with numbers what preStop sleeps and graceful shutdown buy during rolling updates",
		Long: `runner drives rollout-lab experiments.

A plan (YAML) describes the app (replicas, CPU load, shutdown mode, preStop sleep, grace period, probes,
strategy), the open-model load (arrival-rate stages or a constant rate), the rollout restart during the load,
and the cases to compare. See README.md for the plan format.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			// Quiet by default, as kubectl and helm are: the live progress line tells what runs; -v tells all.
			level := slog.LevelWarn
			if verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(streams.Err, &slog.HandlerOptions{Level: level})))
		},
	}
	root.SetVersionTemplate("rollout-lab runner {{.Version}} (runner version: the libraries it was built with)\n")
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	if streams.In != nil {
		root.SetIn(streams.In)
	}
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log what the runner does, in detail (default: warnings and errors only)")
	root.AddCommand(newValidateCommand(), newPlanCommand(), newApplyCommand(), newCheckCommand(), newAttackCommand(), newReportCommand(), newLabCommand(), newCalibrateCommand(), newVersionCommand(), newWorkerCommand())
	return root
}
