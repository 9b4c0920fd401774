package cli

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rollout-lab/rollout-lab/check"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// newCheckCommand runs the built-in shutdown check of any app and exits 0, 3 (a behaviour failed) or 1.
func newCheckCommand() *cobra.Command {
	var c checkCommand
	cmd := &cobra.Command{
		Use:   "check [flags] -- COMMAND [ARGS...]",
		Short: "Check whether any app survives a rolling update: a verdict per shutdown behaviour, an exit code for CI",
		Long: `Run the app (its command after --, or --image) as a Deployment on the embedded lab, roll it over under load
and judge how it shuts down, one case per behaviour:

  keeps-accepting     a new connection per request through a tcp load balancer, no preStop (or --prestop):
                      are new connections refused after SIGTERM, before the proxies let go of the Pod?
  finishes-in-flight  pooled connections through an http load balancer at a rate chosen by Little's law from the
                      app's latency in the accept case (several requests in flight per Pod, at most --max-rate):
                      requests in flight at SIGTERM, completed or cut
  closes-idle         pooled connections idle at SIGTERM: errors or 502s from a close racing a request
  exits-in-time       exit codes, SIGTERM → exit, whether SIGKILL was needed (from every case)
  prestop-needed      the smallest preStop sleep with no error here, next to the lab's measured service-out

It prints a verdict table (✓/✗ with the figures behind each), writes report.md, report.html and report.json like
apply, and exits 0 when every behaviour passed or was not exercised (–), 3 when one failed, 1 on an error.
--expect max-errors=N, max-exit=DURATION, allow=BEHAVIOUR or exercised change what fails. --print-plan prints the plan it runs (runner apply runs it
as it is). The lab needs root.`,
		Example: `  runner check -- ./myserver --listen :8080
  runner check --port 9000 --path /api/items --health /healthz -- /usr/local/bin/app
  runner check --image example/app=/usr/local/bin/app --prestop 5s
  runner check --print-plan -- ./myserver > check.yaml`,
		RunE: c.run,
	}
	c.register(cmd)
	return cmd
}

// checkCommand is runner check's flags and what it does with them.
type checkCommand struct {
	flags     applyFlags
	opts      check.Options
	image     string
	expect    []string
	printPlan bool
	maxRate   float64
}

func (c *checkCommand) register(cmd *cobra.Command) {
	opts := &c.opts
	f := cmd.Flags()
	f.IntVar(&opts.Port, "port", check.DefaultPort, "the port the app listens on")
	f.StringVar(&opts.Path, "path", "/", "the request the load sends (path and query)")
	f.StringVar(&opts.Method, "method", "GET", "the request's method (GET or POST)")
	f.StringVar(&opts.Body, "body", "", "the request's body (POST)")
	f.StringVar(&opts.Health, "health", "", "the readiness probe's path; empty: a TCP connect to --port")
	f.IntVar(&opts.Replicas, "replicas", check.DefaultReplicas, "replicas of the app's Deployment")
	f.DurationVar(&opts.Grace, "grace", check.DefaultGrace, "terminationGracePeriodSeconds of the app's Pods")
	f.DurationVar(&opts.Timeout, "timeout", check.DefaultTimeout, "each request's timeout")
	f.DurationVar(&opts.PreStop, "prestop", 0, "the preStop sleep the app's Deployment has (0: none)")
	f.StringVar(&c.image, "image", "", "the app as an image: IMAGE=COMMAND maps it to a local command in the lab; IMAGE alone on a cluster")
	f.StringArrayVar(&c.expect, "expect", nil, "what fails the check: max-errors=N (per behaviour, default 0), max-exit=DURATION (default the grace period), allow=BEHAVIOUR[,…], exercised (a behaviour not exercised, –, fails)")
	f.Float64Var(&c.maxRate, "max-rate", check.DefaultMaxRate, "the highest arrival rate (requests/s) the in-flight case may send to put requests in flight at each SIGTERM")
	f.BoolVar(&c.printPlan, "print-plan", false, "print the check's plan (a plan file for runner apply) and exit")
	f.StringVar(&opts.Lang, "lang", "en", "the report's language (en or ja)")
	c.flags.register(cmd, false)
}

// run writes the check's plan, applies it (choosing the in-flight case's load on the way), prints the verdicts and
// exits 3 when a behaviour failed.
func (c *checkCommand) run(cmd *cobra.Command, args []string) error {
	if len(args) > 0 && cmd.ArgsLenAtDash() != 0 {
		return fmt.Errorf("the app's command goes after --: runner check [flags] -- %s", strings.Join(args, " "))
	}
	p, data, stored, err := c.plan(args)
	if err != nil {
		return err
	}
	if c.printPlan {
		_, err := cmd.OutOrStdout().Write(data)
		return err
	}
	if err := c.flags.cluster.fitsTarget("the check", p); err != nil {
		return err
	}
	planDir, err := os.MkdirTemp("", "rollout-lab-check")
	if err != nil {
		return err
	}
	defer os.RemoveAll(planDir)
	planFile := filepath.Join(planDir, "check.yaml")
	if err := os.WriteFile(planFile, data, 0o644); err != nil {
		return err
	}
	c.flags.tuneCase = func(tc plan.Case, finished []rundir.RunRecord) (plan.Case, string) {
		tuned, chosen, ok := check.TuneInFlight(tc, finished, c.maxRate)
		if !ok {
			return tc, ""
		}
		return tuned, chosen.String()
	}
	start := time.Now()
	result, err := c.flags.run(cmd, p, planFile, stored)
	if err != nil {
		return err
	}
	printVerdicts(cmd.OutOrStdout(), result.Verdicts)
	fmt.Fprintf(cmd.OutOrStdout(), "checked in %s: %s\n", time.Since(start).Round(time.Second), filepath.Join(result.Dir, "report.html"))
	if check.Failed(result.Verdicts) {
		fmt.Fprintln(cmd.ErrOrStderr(), "a behaviour failed: see the ✗ and its fix")
		return &exitError{code: ExitExpectationFailed}
	}
	return nil
}

// plan is the check's plan for the app of args (or --image), its YAML, and the expectations to store with the run.
func (c *checkCommand) plan(args []string) (*plan.Plan, []byte, map[string]string, error) {
	command, err := appCommand(args)
	if err != nil {
		return nil, nil, nil, err
	}
	opts := c.opts
	opts.Command = command
	if c.image != "" {
		name, argv, mapped := strings.Cut(c.image, "=")
		opts.Image = name
		if mapped {
			opts.Images = map[string][]string{name: strings.Fields(argv)}
		}
	}
	_, stored, err := check.ParseExpect(c.expect)
	if err != nil {
		return nil, nil, nil, err
	}
	overrides, err := c.flags.cluster.overrides()
	if err != nil {
		return nil, nil, nil, err
	}
	p, data, err := check.Plan(opts, overrides)
	return p, data, stored, err
}

// appCommand makes the app's executable a path the lab can run: as given when it has a slash (made absolute),
// else looked up in PATH.
func appCommand(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, nil
	}
	argv := append([]string(nil), args...)
	if strings.Contains(argv[0], "/") {
		abs, err := filepath.Abs(argv[0])
		if err != nil {
			return nil, err
		}
		argv[0] = abs
	} else {
		path, err := exec.LookPath(argv[0])
		if err != nil {
			return nil, fmt.Errorf("the app's command %q: %w", argv[0], err)
		}
		argv[0] = path
	}
	if info, err := os.Stat(argv[0]); err != nil || info.IsDir() || info.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("the app's command %s: not an executable file", argv[0])
	}
	return argv, nil
}

// printVerdicts writes the verdict table for a terminal: mark, question, figures, and the fix under a ✗.
func printVerdicts(w io.Writer, verdicts []check.Verdict) {
	for _, v := range verdicts {
		fmt.Fprintf(w, "%s %s\n    %s\n", v.Mark(), v.Question, v.Figure)
		if v.Fix != "" && !v.OK {
			fmt.Fprintf(w, "    fix: %s\n", v.Fix)
		}
	}
}
