package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

type prometheusFlags struct {
	url       string
	tokenFile string
}

func (f *prometheusFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.url, "prometheus-url", "", "query this Prometheus instead of the embedded one (it must scrape the runner's metrics)")
	cmd.Flags().StringVar(&f.tokenFile, "prometheus-token-file", "", "file holding a bearer token for --prometheus-url")
}

func (f *prometheusFlags) token() (string, error) {
	if f.tokenFile == "" {
		return "", nil
	}
	data, err := os.ReadFile(f.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--prometheus-token-file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// newAttackCommand is the attack command's help, flags and their mapping onto a plan; long because the flags
// are many, each one line.
func newAttackCommand() *cobra.Command {
	var (
		url, planFile, caseName, stages  string
		rate                             float64
		duration, timeout                time.Duration
		startRate                        float64
		connection                       string
		thinkTime                        time.Duration
		connections, workers, maxWorkers int
		session                          sessionFlags
	)
	cmd := &cobra.Command{
		Use:   "attack --url URL (--rate R --duration D | --stages D:T,... | --plan PLAN --case NAME)",
		Short: "Send open-model load to a URL, metrics into Prometheus, and write the results directory",
		Long: `Send open-model HTTP load (arrivals do not wait for responses) to --url and record every outcome as
Prometheus metrics. The embedded Prometheus scrapes them every scrape interval into results/<name>/<time>/tsdb;
after the load one more scrape, then the reports: report.md (and report.en.md), report.html, report.json, report.csv and charts/.

The schedule comes from flags (--rate with --duration, or --stages with --start-rate) or from a plan's case
(--plan with --case): the load section of that case.`,
		Example: `  runner attack --url http://127.0.0.1:8080/say --rate 100 --duration 30s
  runner attack --url http://127.0.0.1:8080/say --start-rate 1 --stages 60s:200,60s:200,60s:1
  runner attack --url http://127.0.0.1:8080 --plan plans/quick.yaml --case gs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if url == "" {
				return errors.New("--url is required")
			}
			p, c, err := attackSchedule(cmd, planFile, caseName)
			if err != nil {
				return err
			}
			source := planFile
			token, err := session.prom.token()
			if err != nil {
				return err
			}
			return runAttack(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), experiment.Config{
				Plan: p, PlanSource: source, ResultsRoot: session.resultsRoot, PrometheusURL: session.prom.url, PrometheusToken: token,
				MetricsListen: session.metricsListen, ScrapeInterval: session.scrapeInterval, Logger: slog.Default(),
				Provenance: provenance(map[string]string{"kind": "none", "url": url}),
			}, c, url)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "", "the URL to load (GET)")
	f.Float64Var(&rate, "rate", 0, "constant arrivals per second (with --duration)")
	f.DurationVar(&duration, "duration", 0, "how long a constant rate lasts")
	f.Float64Var(&startRate, "start-rate", 0, "arrival rate at the start of --stages")
	f.StringVar(&stages, "stages", "", "arrival-rate stages DURATION:TARGET,... each moving linearly to its target, e.g. 60s:200,60s:200,60s:1")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "per-request timeout")
	f.StringVar(&connection, "connection", plan.ConnectionPerUser, "per-user (a new connection per request, as a virtual user) or pooled (keep-alive)")
	f.DurationVar(&thinkTime, "think-time", 0, "per-user: keep each connection open this long after its response")
	f.IntVar(&connections, "connections", 10000, "idle connections kept per host")
	f.IntVar(&workers, "workers", 10, "initial workers")
	f.IntVar(&maxWorkers, "max-workers", 0, "bound on workers (0: none)")
	f.StringVar(&planFile, "plan", "", "take the load from this plan ...")
	f.StringVar(&caseName, "case", "", "... and this case of it")
	session.register(cmd)
	return cmd
}

// attackSchedule is the plan and case an attack sends: a plan file's case, or a plan made of the load flags set.
func attackSchedule(cmd *cobra.Command, planFile, caseName string) (*plan.Plan, plan.Case, error) {
	var p *plan.Plan
	if planFile != "" {
		var err error
		if p, err = plan.LoadFile(planFile); err != nil {
			return nil, plan.Case{}, err
		}
		if caseName == "" {
			return nil, plan.Case{}, fmt.Errorf("--case is required with --plan; cases of %s: %s", planFile, caseNames(p))
		}
	} else {
		if caseName != "" {
			return nil, plan.Case{}, errors.New("--case needs --plan")
		}
		flags := map[string]string{}
		for _, lf := range plan.LoadFlags {
			if f := cmd.Flags().Lookup(lf.Flag); f != nil && f.Changed {
				flags[lf.Key] = f.Value.String()
			}
		}
		var err error
		if p, err = plan.FromLoadFlags("attack", flags); err != nil {
			return nil, plan.Case{}, err
		}
		caseName = plan.DefaultCaseName
	}
	c, ok := p.Case(caseName)
	if !ok {
		return nil, plan.Case{}, fmt.Errorf("plan %s has no case %q; its cases: %s", p.Name, caseName, caseNames(p))
	}
	return p, c, nil
}

func caseNames(p *plan.Plan) string {
	names := make([]string, len(p.Cases))
	for i, c := range p.Cases {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

func provenance(target map[string]string) rundir.Provenance {
	info := ReadBuildInfo()
	p := rundir.NewProvenance(info.Version, info.Libraries)
	p.Target = target
	return p
}

func runAttack(ctx context.Context, out, errOut io.Writer, cfg experiment.Config, c plan.Case, url string) error {
	progress := newProgressPrinter(errOut)
	result, err := experiment.Attack(ctx, experiment.AttackConfig{Config: cfg, Case: c, URL: url, Progress: progress.print,
		Started: func(dir string) {
			fmt.Fprintf(errOut, "attack %s: %d requests over %s, results in %s\n", url, c.Requests, c.Load.TotalDuration(), dir)
		}})
	progress.done()
	if !result.Reported {
		return err
	}
	writeSummary(out, result.Summary)
	if len(result.Report.Runs) == 1 {
		w := result.Report.Runs[0].Whole
		fmt.Fprintf(out, "Prometheus: %d requests, %d 2xx, error rate %.2f%%, p99 %.1f ms\n", w.Total, w.OK, w.ErrorRate*100, w.P99Ms)
	}
	fmt.Fprintf(out, "report: %s, %s\n", filepath.Join(result.Dir, "report.md"), filepath.Join(result.Dir, "report.html"))
	return err
}

func writeSummary(out io.Writer, s load.Summary) {
	fmt.Fprintf(out, "sent %d of %d planned in %s; completed %d: %d ok", s.Sent, s.Planned, s.End.Sub(s.Start).Round(time.Millisecond), s.Completed, s.ByClass[load.ClassNone])
	for _, class := range load.ErrorClasses {
		if n := s.ByClass[class]; n > 0 {
			fmt.Fprintf(out, ", %d %s", n, class)
		}
	}
	fmt.Fprintf(out, "\nlatency mean %s p50 %s p90 %s p99 %s max %s\n", s.Mean.Round(time.Microsecond), s.P50.Round(time.Microsecond),
		s.P90.Round(time.Microsecond), s.P99.Round(time.Microsecond), s.Max.Round(time.Microsecond))
}

// progressPrinter shows one live line on a terminal, and a line every 10 s elsewhere (logs, CI).
type progressPrinter struct {
	prefix string
	total  time.Duration // the schedule's length, shown after the elapsed time when set
	w      io.Writer
	tty    bool
	last   time.Time
	wrote  bool
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	f, ok := w.(*os.File)
	return &progressPrinter{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progressPrinter) print(pr load.Progress) {
	classes := make([]string, 0, len(pr.Errors))
	for class, n := range pr.Errors {
		classes = append(classes, fmt.Sprintf("%s %d", class, n))
	}
	sort.Strings(classes)
	errs := "no errors"
	if len(classes) > 0 {
		errs = strings.Join(classes, ", ")
	}
	elapsed := fmt.Sprintf("%6s", pr.Elapsed.Round(time.Second))
	if p.total > 0 {
		elapsed += "/" + p.total.Round(time.Second).String()
	}
	line := p.prefix + fmt.Sprintf("%s  sent %d/%d  rate %.1f/s  2xx %d  %s  p99 %s", elapsed, pr.Sent, pr.Planned, pr.Rate, pr.OK, errs, pr.P99.Round(100*time.Microsecond))
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.wrote = true
		return
	}
	if time.Since(p.last) >= 10*time.Second {
		p.last = time.Now()
		fmt.Fprintln(p.w, line)
	}
}

// phase announces a new phase: on a terminal the live line moves on, elsewhere a line is logged.
func (p *progressPrinter) phase(line string) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.wrote = true
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progressPrinter) done() {
	if p.wrote {
		fmt.Fprintln(p.w)
	}
}

func newReportCommand() *cobra.Command {
	var prom prometheusFlags
	cmd := &cobra.Command{
		Use:   "report RESULTS_DIR",
		Short: "Regenerate every report of a results directory from its stored TSDB, running nothing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, err := prom.token()
			if err != nil {
				return err
			}
			rep, err := experiment.Regenerate(cmd.Context(), args[0], prom.url, token)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d run(s) of plan %s: %s/report.md, report.html, report.json, report.csv, charts/\n", len(rep.Runs), rep.Plan, args[0])
			return nil
		},
	}
	prom.register(cmd)
	return cmd
}
