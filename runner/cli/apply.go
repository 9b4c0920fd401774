package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// newApplyCommand is the apply command's help, flags and progress line; the work is experiment.Apply's.
func newApplyCommand() *cobra.Command {
	var flags applyFlags
	cmd := &cobra.Command{
		Use:   "apply PLAN",
		Short: "Run a plan: install cowweb, load it, restart it during the load, and report per case",
		Long: `Run every case of a plan on the embedded lab (or, with target kind kubernetes, on a cluster): install the chart with the case's values (Helm SDK), wait for
every Pod Ready, send the plan's open-model load through the lab's Service dataplane, do what
` + "`kubectl rollout restart`" + ` does at rollout.at and wait as ` + "`kubectl rollout status`" + ` does, record every Pod's lifecycle,
and write results/<plan>/<UTC time>/ (report.md, report.html, report.json, report.csv, charts/, events per case, the TSDB).
Ctrl-C (or SIGTERM) stops the load, removes what was installed, stops the lab and writes what finished, marked
partial; a second one exits at once. --resume RESULTS_DIR then runs what did not finish, with the same plan file.

On a cluster (--target kubernetes, or target.kind in the plan) the kubeconfig is read as kubectl reads it, but the
context must be named (--context or target.context): the current one is never used. Before installing anything
the runner shows the cluster, context, namespace, server version and the planned load, and asks on a terminal
(--yes skips the question). Load goes from this process to load.url (or --load-url).`,
		Example: `  runner apply plans/quick.yaml
  runner apply plans/l640-rep8-rps200.yaml
  runner apply plans/l640-rep8-rps200.yaml --resume results/l640-rep8-rps200/20261128T031500Z
  runner apply plans/quick.yaml --target kubernetes --context kind-rollout --load-url http://172.18.0.2:30080`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := flags.cluster.load(args[0])
			if err != nil {
				return err
			}
			result, err := flags.run(cmd, p, args[0], nil)
			if err == nil && result.ExpectationsFailed {
				fmt.Fprintln(cmd.ErrOrStderr(), "a case broke an expectation of the plan: see the ✗ in the report")
				return &exitError{code: ExitExpectationFailed}
			}
			return err
		},
	}
	flags.register(cmd, true)
	return cmd
}

// applyFlags are the flags apply and check share, and the run of a plan they both do.
type applyFlags struct {
	sessionFlags
	resume  string
	cluster clusterFlags
	// tuneCase is set by runner check (experiment.ApplyConfig.TuneCase).
	tuneCase func(c plan.Case, finished []rundir.RunRecord) (plan.Case, string)
}

func (f *applyFlags) register(cmd *cobra.Command, resumable bool) {
	f.sessionFlags.register(cmd)
	if resumable {
		cmd.Flags().StringVar(&f.resume, "resume", "", "continue the interrupted run in this results directory: finished cases are kept, the rest run")
	}
	f.cluster.register(cmd)
}

// sessionFlags are the flags of every command that fills a results directory (apply, check, attack): where it
// goes, and how its metrics are served, scraped and queried.
type sessionFlags struct {
	resultsRoot, metricsListen string
	scrapeInterval             time.Duration
	prom                       prometheusFlags
}

func (f *sessionFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.resultsRoot, "results", "results", "root of the results directories")
	cmd.Flags().DurationVar(&f.scrapeInterval, "scrape-interval", time.Second, "how often Prometheus scrapes the metrics")
	cmd.Flags().StringVar(&f.metricsListen, "metrics-listen", "127.0.0.1:0", "where the runner serves its metrics (docker-compose.yaml's Prometheus scrapes 127.0.0.1:9464)")
	f.prom.register(cmd)
}

// run applies a plan (from planFile) with the live progress line and says where the reports are; checkExpect,
// when set, makes the run a check.
func (f *applyFlags) run(cmd *cobra.Command, p *plan.Plan, planFile string, checkExpect map[string]string) (experiment.ApplyResult, error) {
	connect, err := f.cluster.connect(cmd, planFile, p)
	if err != nil {
		return experiment.ApplyResult{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return experiment.ApplyResult{}, err
	}
	if f.prom.url == "" && p.Prometheus.URL != "" {
		f.prom.url, f.prom.tokenFile = p.Prometheus.URL, p.Prometheus.TokenFile
	}
	token, err := f.prom.token()
	if err != nil {
		return experiment.ApplyResult{}, err
	}
	errOut := cmd.ErrOrStderr()
	progress := newProgressPrinter(errOut)
	start := time.Now()
	result, err := experiment.Apply(cmd.Context(), experiment.ApplyConfig{
		Config: experiment.Config{Plan: p, PlanSource: planFile, ResultsRoot: f.resultsRoot, ScrapeInterval: f.scrapeInterval,
			PrometheusURL: f.prom.url, PrometheusToken: token, MetricsListen: f.metricsListen,
			Logger: slog.Default(), Provenance: provenance(nil), ResumeDir: f.resume, Check: checkExpect},
		Connect:  connect,
		Cowweb:   cowwebCommand(self, slog.Default()),
		TuneCase: f.tuneCase,
		Progress: func(caseName string, run int, phase string, pr load.Progress) {
			c, _ := p.Case(caseName)
			progress.prefix = fmt.Sprintf("[%s %d/%d #%d %s] ", caseName, caseIndex(p, caseName), len(p.Cases), run, phase)
			progress.total = c.Load.TotalDuration()
			if caseName == "" {
				progress.prefix = "[" + phase + "] "
			}
			if pr.Planned == 0 {
				progress.phase(progress.prefix + "…")
				return
			}
			progress.print(pr)
		},
	})
	progress.done()
	if result.Dir != "" {
		fmt.Fprintf(cmd.OutOrStdout(), "plan %s: %d case(s) in %s; report: %s, %s\n", p.Name, len(p.Cases),
			time.Since(start).Round(time.Second), filepath.Join(result.Dir, "report.md"), filepath.Join(result.Dir, "report.html"))
	}
	if err != nil && result.Partial && result.Dir != "" {
		return result, errors.Join(err, fmt.Errorf("the results in %s are partial", result.Dir))
	}
	return result, err
}

// caseIndex is the 1-based position of a case in its plan.
func caseIndex(p *plan.Plan, name string) int {
	for i, c := range p.Cases {
		if c.Name == name {
			return i + 1
		}
	}
	return 0
}
