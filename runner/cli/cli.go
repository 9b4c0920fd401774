// Package cli is the runner's command line: flags and output only, the work is done by the packages it calls.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
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

// NewRootCommand builds the command tree.
func NewRootCommand(streams Streams) *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:   "runner",
		Short: "Prove with numbers what preStop sleeps and graceful shutdown buy during rolling updates",
		Long: `runner drives rollout-lab experiments.

A plan (YAML) describes the app (replicas, CPU load, shutdown mode, preStop sleep, grace period, probes,
strategy), the open-model load (arrival-rate stages or a constant rate), the rollout restart during the load,
and the cases to compare. See README.md for the plan format.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(streams.Err, &slog.HandlerOptions{Level: level})))
		},
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	if streams.In != nil {
		root.SetIn(streams.In)
	}
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug details")
	root.AddCommand(newValidateCommand(), newPlanCommand(), newApplyCommand(), newAttackCommand(), newReportCommand(), newLabCommand(), newVersionCommand(), newWorkerCommand())
	return root
}
