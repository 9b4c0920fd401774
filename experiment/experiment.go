// Package experiment runs load against a target with its metrics in Prometheus and writes the results directory:
// what `runner attack` does now and `runner apply` builds on.
package experiment

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/check"
	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/report"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// MetricsJob is the scrape job of the runner's own metrics (the attacker's).
const MetricsJob = "rollout-lab"

// Kinds of results directory.
const (
	KindAttack = "attack"
	KindApply  = "apply"
)

// quietHandler passes on only records at or above a level: the embedded Prometheus logs much at info.
type quietHandler struct {
	slog.Handler
	min slog.Level
}

func (h quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(attrs), h.min}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name), h.min}
}

// Config is what a session needs; clients and sinks are injected here so tests can swap them.
type Config struct {
	Plan       *plan.Plan
	PlanSource string // the plan file, hashed into the provenance; empty for plans built from flags
	Kind       string // attack or apply
	// ResultsRoot is where results/<plan>/<time>/ is created.
	ResultsRoot string
	// PrometheusURL, when set, is an external Prometheus that scrapes MetricsListen; otherwise one is embedded.
	PrometheusURL   string
	PrometheusToken string
	// MetricsListen is where the runner serves its metrics; default 127.0.0.1:0.
	MetricsListen  string
	ScrapeInterval time.Duration
	Provenance     rundir.Provenance
	// Check, when set, makes the run a check: its expectations are kept in run.json and its reports carry the
	// verdicts (package check).
	Check  map[string]string
	Logger *slog.Logger
	// ResumeDir reopens an interrupted apply's results directory (same plan file, embedded Prometheus) instead of
	// creating one: its finished runs are kept, and what unfinished runs left in the TSDB is deleted.
	ResumeDir string
}

// Session is a started experiment: metrics served, Prometheus scraping them, a results directory open.
type Session struct {
	cfg      Config
	Dir      string
	Manifest *rundir.Manifest
	Registry *prometheus.Registry
	Metrics  *load.Metrics
	// Attributed counts failed requests by attributed cause.
	Attributed *prometheus.CounterVec
	API        promv1.API
	prom       *embedprom.Server
	metrics    *http.Server
	logger     *slog.Logger
}

// Start creates the results directory, serves the metrics and starts (or connects to) Prometheus: one sequence of
// steps whose order matters (the manifest before the TSDB, the metrics address before the scrape target).
func Start(cfg Config) (_ *Session, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ScrapeInterval <= 0 {
		cfg.ScrapeInterval = time.Second
	}
	if cfg.MetricsListen == "" {
		cfg.MetricsListen = "127.0.0.1:0"
	}
	started := time.Now().UTC()
	var previous *rundir.Manifest
	dir := cfg.ResumeDir
	if dir != "" {
		if previous, err = resumable(cfg); err != nil {
			return nil, err
		}
		started = previous.Started
	} else if dir, err = rundir.Create(cfg.ResultsRoot, cfg.Plan.Name, started); err != nil {
		return nil, err
	}
	s := &Session{cfg: cfg, Dir: dir, logger: cfg.Logger, Registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.writeManifest(previous, started); err != nil {
		return nil, err
	}
	s.Metrics = load.NewMetrics(s.Registry)
	s.Attributed = NewAttributedCounter(s.Registry)
	var addr string
	if s.metrics, addr, err = load.ServeMetrics(cfg.MetricsListen, s.Registry); err != nil {
		return nil, err
	}
	cfg.Logger.Info("serving metrics", "url", "http://"+addr+"/metrics")
	if err := s.startPrometheus(addr, previous != nil); err != nil {
		return nil, err
	}
	return s, nil
}

// writeManifest writes the plan file and run.json as the session starts: a resumed session keeps its finished
// runs, drops the interrupted one and notes when it resumed.
func (s *Session) writeManifest(previous *rundir.Manifest, started time.Time) error {
	cfg := s.cfg
	if cfg.PlanSource != "" {
		data, err := os.ReadFile(cfg.PlanSource)
		if err != nil {
			return err
		}
		cfg.Provenance.PlanHash = rundir.Hash(data)
		if err := rundir.WriteFileAtomic(filepath.Join(s.Dir, rundir.PlanFile), data, 0o644); err != nil {
			return err
		}
	}
	s.Manifest = &rundir.Manifest{Kind: cfg.Kind, Plan: cfg.Plan, Started: started, Partial: true, Provenance: cfg.Provenance, Check: cfg.Check,
		Prometheus: rundir.PrometheusInfo{Embedded: cfg.PrometheusURL == "", URL: cfg.PrometheusURL, ScrapeInterval: cfg.ScrapeInterval}}
	if previous != nil {
		for _, r := range previous.Runs {
			if !r.Summary.Stopped { // an interrupted run runs again
				s.Manifest.Runs = append(s.Manifest.Runs, r)
			}
		}
		s.Manifest.Prometheus.ScrapeInterval = previous.Prometheus.ScrapeInterval
		s.Manifest.Resumed = append(previous.Resumed, time.Now().UTC())
	}
	return s.Manifest.Save(s.Dir)
}

// startPrometheus connects the session to the external Prometheus, or starts the embedded one scraping the
// runner's metrics at addr (a resumed session first deletes what its interrupted run left).
func (s *Session) startPrometheus(addr string, resumed bool) error {
	cfg, dir := s.cfg, s.Dir
	var err error
	if cfg.PrometheusURL != "" {
		if s.API, err = embedprom.NewClient(cfg.PrometheusURL, cfg.PrometheusToken); err != nil {
			return err
		}
		cfg.Logger.Info("using an external Prometheus; it must scrape the metrics address above", "url", plan.RedactURL(cfg.PrometheusURL))
		return nil
	}
	s.prom, err = embedprom.Start(embedprom.Options{Dir: filepath.Join(dir, rundir.TSDBDir), ScrapeInterval: cfg.ScrapeInterval,
		Logger: slog.New(quietHandler{cfg.Logger.Handler(), slog.LevelWarn}).With("component", "prometheus")})
	if err != nil {
		return err
	}
	if err := s.prom.WriteToken(filepath.Join(dir, rundir.TokenFile)); err != nil {
		return err
	}
	if resumed {
		if err := s.dropUnfinishedRuns(); err != nil {
			return err
		}
	}
	if err := s.prom.SetTargets(MetricsJob, []embedprom.Target{{Address: addr}}); err != nil {
		return err
	}
	if s.API, err = s.prom.Client(); err != nil {
		return err
	}
	cfg.Logger.Info("embedded Prometheus", "url", s.prom.URL(), "token_file", filepath.Join(dir, rundir.TokenFile))
	return nil
}

// KubeProxyJob is the scrape job of the lab nodes' kube-proxies (their :10249).
const KubeProxyJob = "kube-proxy"

// TargetInputs are what the session gives a target to open with.
func (s *Session) TargetInputs() TargetInputs {
	return TargetInputs{Plan: s.cfg.Plan, Registry: s.Registry, Dir: s.Dir, Logger: s.logger, ScrapeKubeProxies: s.scrapeKubeProxies}
}

// scrapeKubeProxies has the embedded Prometheus scrape every node's kube-proxy, labelled by node.
func (s *Session) scrapeKubeProxies(nodes []kubeproxy.Node) error {
	if s.prom == nil {
		return nil
	}
	targets := make([]embedprom.Target, 0, len(nodes))
	for _, n := range nodes {
		targets = append(targets, embedprom.Target{Address: net.JoinHostPort(n.IP.String(), strconv.Itoa(kubeproxy.MetricsPort)), Labels: map[string]string{"node": n.Name}})
	}
	return s.prom.SetTargets(KubeProxyJob, targets)
}

// resumable checks that cfg.ResumeDir holds an interrupted apply of the same plan file, and returns its manifest.
func resumable(cfg Config) (*rundir.Manifest, error) {
	m, err := rundir.Load(cfg.ResumeDir)
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	switch {
	case cfg.PrometheusURL != "" || !m.Prometheus.Embedded:
		return nil, fmt.Errorf("resume %s: only runs recorded by the embedded Prometheus can be resumed", cfg.ResumeDir)
	case m.Kind != cfg.Kind:
		return nil, fmt.Errorf("resume %s: it holds an %s, not an %s", cfg.ResumeDir, m.Kind, cfg.Kind)
	case !m.Partial:
		return nil, fmt.Errorf("resume %s: the run finished; nothing to resume", cfg.ResumeDir)
	}
	if cfg.PlanSource != "" {
		data, err := os.ReadFile(cfg.PlanSource)
		if err != nil {
			return nil, err
		}
		if hash := rundir.Hash(data); hash != m.Provenance.PlanHash {
			return nil, fmt.Errorf("resume %s: %s changed since that run (SHA-256 %.12s…, was %.12s…); start a new run instead",
				cfg.ResumeDir, cfg.PlanSource, hash, m.Provenance.PlanHash)
		}
	}
	return m, nil
}

// dropUnfinishedRuns deletes the series of every planned run the manifest does not hold as finished.
func (s *Session) dropUnfinishedRuns() error {
	for _, c := range s.cfg.Plan.Cases {
		for run := 1; run <= s.cfg.Plan.Repeats; run++ {
			labels := load.Labels{Plan: s.cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)}
			if s.Finished(labels) {
				continue
			}
			if err := s.prom.DeleteSeries(context.Background(), map[string]string{"plan": labels.Plan, "case": labels.Case, "run": labels.Run}, time.Now()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Finished says whether a run is recorded as finished (a resumed apply skips it).
func (s *Session) Finished(labels load.Labels) bool {
	for _, r := range s.Manifest.Runs {
		if r.Labels == labels && !r.Summary.Stopped {
			return true
		}
	}
	return false
}

// NewAttributedCounter counts failed requests by attributed cause, registered on reg.
func NewAttributedCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rolloutlab_errors_attributed_total",
		Help: "Failed requests by why they failed: before-service-out, in-flight-cut, other.",
	}, []string{"plan", "case", "run", "cause"})
	reg.MustRegister(c)
	return c
}

// Prometheus is the embedded server, nil with an external one.
func (s *Session) Prometheus() *embedprom.Server { return s.prom }

// Attack runs one case's load against url (through dial when set) and records the run.
func (s *Session) Attack(ctx context.Context, c plan.Case, run int, url string, dial load.DialFunc, progress func(load.Progress), observe func(load.Outcome)) (rundir.RunRecord, error) {
	labels := load.Labels{Plan: s.cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)}
	opts, err := load.OptionsFromPlan(url, c.Load, labels)
	if err != nil {
		return rundir.RunRecord{}, err
	}
	opts.Dial, opts.Progress, opts.Observe = dial, progress, observe
	if err := s.BeginRun(labels, c.App.TerminationGracePeriod.D()); err != nil {
		return rundir.RunRecord{}, err
	}
	summary, err := load.Attack(ctx, opts, s.Metrics)
	record := rundir.RunRecord{Labels: labels, Summary: summary, Drain: c.App.TerminationGracePeriod.D()}
	if err != nil {
		return record, err
	}
	return record, s.RecordRun(record)
}

// BeginRun records a run as in progress before its load starts, so that a runner killed during it leaves a results
// directory whose report still shows the run (interrupted) from the samples stored so far.
func (s *Session) BeginRun(labels load.Labels, drain time.Duration) error {
	s.Manifest.Runs = append(s.Manifest.Runs, rundir.RunRecord{Labels: labels, Summary: load.Summary{Stopped: true}, Drain: drain, InProgress: true})
	return s.Manifest.Save(s.Dir)
}

// RecordRun records a finished (or stopped) run in the manifest, in place of its in-progress record.
func (s *Session) RecordRun(record rundir.RunRecord) error {
	if n := len(s.Manifest.Runs); n > 0 && s.Manifest.Runs[n-1].InProgress && s.Manifest.Runs[n-1].Labels == record.Labels {
		s.Manifest.Runs[n-1] = record
	} else {
		s.Manifest.Runs = append(s.Manifest.Runs, record)
	}
	return s.Manifest.Save(s.Dir)
}

// RunDetails is what an apply's run adds to its record once its load ended.
type RunDetails struct {
	Attribution        map[string]uint64
	AttributionByClass map[string]map[string]uint64
	InFlight           []rundir.PodInFlight
	Installed          *rundir.Installed
}

// CompleteRun adds a run's details to its record (the last one recorded, when it is that run's: a run whose load
// failed to start has none).
func (s *Session) CompleteRun(labels load.Labels, d RunDetails) error {
	n := len(s.Manifest.Runs)
	if n == 0 || s.Manifest.Runs[n-1].Labels != labels {
		return nil
	}
	r := &s.Manifest.Runs[n-1]
	r.Attribution, r.AttributionByClass, r.InFlight, r.Installed = d.Attribution, d.AttributionByClass, d.InFlight, d.Installed
	return s.Manifest.Save(s.Dir)
}

// SetTargetProvenance records what the target says of itself (no credentials) in the results.
func (s *Session) SetTargetProvenance(target map[string]string) {
	s.Manifest.Provenance.Target = target
}

// SetLoadPath records the way the load went, in English and Japanese, with the target's provenance.
func (s *Session) SetLoadPath(description, descriptionJa string) {
	if s.Manifest.Provenance.Target == nil {
		s.Manifest.Provenance.Target = map[string]string{}
	}
	s.Manifest.Provenance.Target["loadPath"] = description
	s.Manifest.Provenance.Target["loadPathJa"] = descriptionJa
}

// FinalScrape waits until Prometheus holds every sample up to t.
func (s *Session) FinalScrape(ctx context.Context, t time.Time) error {
	if s.prom != nil {
		return s.prom.WaitForScrape(ctx, MetricsJob, t)
	}
	// An external Prometheus scrapes on its own schedule: give it two intervals.
	select {
	case <-time.After(2 * s.cfg.ScrapeInterval):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Finish marks the run complete (or partial), writes the reports and returns them.
func (s *Session) Finish(ctx context.Context, partial bool) (report.Contents, error) {
	s.Manifest.Finished = time.Now().UTC()
	s.Manifest.Partial = partial
	if err := s.Manifest.Save(s.Dir); err != nil {
		return report.Contents{}, err
	}
	return WriteReports(ctx, s.Dir, s.Manifest, s.API, s.Manifest.Finished)
}

// Close stops serving metrics and closes Prometheus (its TSDB cleanly).
func (s *Session) Close() error {
	var errs []error
	if s.prom != nil {
		errs = append(errs, s.prom.Close())
	}
	if s.metrics != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, s.metrics.Shutdown(shutdownCtx))
		cancel()
	}
	return errors.Join(errs...)
}

// WriteReports analyses every run of a manifest and writes the reports into dir.
func WriteReports(ctx context.Context, dir string, m *rundir.Manifest, api promv1.API, now time.Time) (report.Contents, error) {
	rep, err := analyzeRuns(ctx, dir, m, api, now)
	if err != nil {
		return report.Contents{Report: rep}, err
	}
	rep.Complete()
	contents := report.Contents{Report: rep}
	if m.Check != nil {
		expect, err := check.ExpectFrom(m.Check)
		if err != nil {
			return contents, fmt.Errorf("run.json check: %w", err)
		}
		contents.Verdicts = check.Verdicts(rep, expect)
	}
	return contents, report.WriteAll(dir, contents, m.Plan.Report.Lang, htmlDocument(dir, m))
}

// analyzeRuns asks Prometheus for the figures of every run of a manifest, the measured service-out among them.
func analyzeRuns(ctx context.Context, dir string, m *rundir.Manifest, api promv1.API, now time.Time) (analysis.Report, error) {
	rep := analysis.Report{Plan: m.Plan.Name, Description: m.Plan.Description, Partial: m.Partial, LoadPath: m.Provenance.Target["loadPath"],
		LoadPathJa: m.Provenance.Target["loadPathJa"], CPUModel: m.Provenance.Target["cpuModel"], CPUModelJa: m.Provenance.Target["cpuModelJa"]}
	if m.Provenance.Target["kind"] == "lab" {
		rep.Cluster = &analysis.PlayedCluster{Profile: m.Plan.Lab.Profile, KubeProxy: m.Plan.Lab.KubeProxy, Background: m.Plan.Lab.Background}
	}
	for _, r := range m.Runs {
		c, ok := m.Plan.Case(r.Labels.Case)
		if !ok {
			return rep, fmt.Errorf("run of case %q: no such case in the plan", r.Labels.Case)
		}
		cond := analysis.ConditionsOf(c)
		// A bare attack deploys nothing: whatever the plan says of the app is not what answered.
		cond.AppKnown = m.Kind != KindAttack
		if in := r.Installed; in != nil {
			// What was installed, Helm values included, not what the plan alone says.
			cond.Replicas, cond.PreStopAction, cond.PreStopSleep = in.Replicas, in.PreStopAction, plan.Duration(in.PreStopSleep)
			cond.Shutdown, cond.DrainDelay, cond.GracePeriod, cond.CPULoad = in.Shutdown, plan.Duration(in.DrainDelay), plan.Duration(in.GracePeriod), in.CPULoad
		}
		opts := analysis.Options{ScrapeInterval: m.Prometheus.ScrapeInterval, Drain: r.Drain, Now: now}
		if m.Kind == KindApply {
			opts.Namespace = m.Plan.Namespace()
		}
		caseRun, err := analysis.Analyze(ctx, api, analysis.FromLabels(r.Labels), cond, opts)
		if err != nil {
			return rep, err
		}
		caseRun.Attribution = r.Attribution
		if caseRun.Attribution == nil && m.Kind == KindApply {
			// Nothing failed: run.json leaves the empty counts out.
			caseRun.Attribution = map[string]uint64{}
		}
		caseRun.InFlight = r.InFlight
		// Results of runners that did not measure lateness have none to show.
		if r.Summary.LatenessMax > 0 {
			caseRun.Lateness = &analysis.Lateness{P99Ms: float64(r.Summary.LatenessP99) / float64(time.Millisecond),
				MaxMs: float64(r.Summary.LatenessMax) / float64(time.Millisecond)}
		}
		caseRun.Interrupted = r.Summary.Stopped
		if caseRun.Timeline, err = analysis.LoadRunTimeline(rundir.RunDir(dir, r.Labels.Case, r.Labels.Run)); err != nil {
			return rep, err
		}
		caseRun.Expectations = analysis.CheckExpectations(c.Expect, caseRun.Whole)
		// A run killed during its load has no count of its own: Prometheus' is all there is.
		if !r.InProgress && caseRun.Whole.Total != r.Summary.Completed {
			return rep, fmt.Errorf("case %s run %s: Prometheus counted %d requests, the attacker %d: metrics are incomplete",
				r.Labels.Case, r.Labels.Run, caseRun.Whole.Total, r.Summary.Completed)
		}
		rep.Runs = append(rep.Runs, caseRun)
	}
	if len(rep.Runs) > 0 {
		w := rep.Runs[0].Load
		for _, r := range rep.Runs[1:] {
			if r.Load.Start.Before(w.Start) {
				w.Start = r.Load.Start
			}
			if r.Load.End.After(w.End) {
				w.End = r.Load.End
			}
		}
		var err error
		if rep.ServiceOut, err = analysis.MeasureServiceOut(ctx, api, w, now); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// htmlDocument is what report.html shows of a run's provenance and plan.
func htmlDocument(dir string, m *rundir.Manifest) report.HTMLDocument {
	p := m.Provenance
	doc := report.HTMLDocument{Provenance: [][2]string{{"tool", p.Tool + " " + p.Version}, {"Go", p.GoVersion}, {"platform", p.Platform},
		{"started", m.Started.Format(time.RFC3339)}, {"finished", m.Finished.Format(time.RFC3339)}}}
	if p.PlanHash != "" {
		doc.Provenance = append(doc.Provenance, [2]string{"plan SHA-256", p.PlanHash})
	}
	for _, k := range slices.Sorted(maps.Keys(p.Target)) {
		doc.Provenance = append(doc.Provenance, [2]string{"target " + k, p.Target[k]})
	}
	if data, err := os.ReadFile(filepath.Join(dir, rundir.PlanFile)); err == nil {
		doc.PlanYAML = string(data)
	}
	return doc
}

// Regenerate rewrites every report of a results directory from its stored TSDB (or the external Prometheus it used).
func Regenerate(ctx context.Context, dir, prometheusURL, token string) (report.Contents, error) {
	m, err := rundir.Load(dir)
	if err != nil {
		return report.Contents{}, err
	}
	var api promv1.API
	var lastSample time.Time
	switch {
	case prometheusURL != "":
		api, err = embedprom.NewClient(prometheusURL, token)
	case m.Prometheus.Embedded:
		var prom *embedprom.Server
		prom, err = embedprom.Start(embedprom.Options{Dir: filepath.Join(dir, rundir.TSDBDir), ReadOnly: true})
		if err == nil {
			defer prom.Close()
			api, err = prom.Client()
			lastSample = prom.LastSample()
		}
	default:
		api, err = embedprom.NewClient(m.Prometheus.URL, token)
	}
	if err != nil {
		return report.Contents{}, err
	}
	now := m.Finished
	if now.IsZero() {
		// Never finished (killed): the data ends with the last sample stored, not now.
		now = time.Now()
		if last := lastSample; !last.IsZero() {
			now = last
		}
	}
	return WriteReports(ctx, dir, m, api, now)
}
