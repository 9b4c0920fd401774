package experiment

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubectl/pkg/polymorphichelpers"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/check"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// ReleaseName is the Helm release of the app; with the chart's naming the Deployment and Service are "cowweb".
const ReleaseName = "cowweb"

// servicePort is the chart's Service port.
const servicePort = 80

// InstalledByLabel marks the Helm releases the runner installs (Helm keeps it on the release record): only those
// are ever uninstalled, so a release of the same name that someone else made stays.
const InstalledByLabel, InstalledByValue = "rollout-lab/installed-by", "runner"

// restrictedNamespaceLabels make a namespace the runner creates enforce the "restricted" Pod Security Standard:
// the chart and the load workers pass it, and nothing else should run there.
var restrictedNamespaceLabels = map[string]string{"pod-security.kubernetes.io/enforce": "restricted",
	"pod-security.kubernetes.io/enforce-version": "latest"}

// ApplyConfig is what `runner apply` needs.
type ApplyConfig struct {
	Config
	// Connect opens the target; nil starts the lab (ConnectLab with Cowweb and LabDir).
	Connect Connect
	// Cowweb is the command that plays the cowweb image in the lab (the runner itself: [runner, cowweb]).
	Cowweb []string
	// LabDir holds the lab's state (its CA, keys, etcd); default a temporary directory removed with the lab.
	LabDir string
	// Progress, when set, sees every phase as it begins (with a zero load.Progress) and the load's progress.
	Progress func(caseName string, run int, phase string, p load.Progress)
	// TuneCase, when set, may change a case before its first run from the runs finished before it (runner check
	// chooses its in-flight load from the app's latency); note says what it changed and why. The changed case is
	// what run.json and the reports show.
	TuneCase func(c plan.Case, finished []rundir.RunRecord) (tuned plan.Case, note string)
}

// Phases of an apply, as Progress names them.
const (
	PhaseInstall = "install"
	PhaseWarmUp  = "warm-up" // load running, before the rollout
	PhaseRollout = "rollout"
	PhaseDrain   = "drain" // load still running after the rollout completed
	PhaseReport  = "report"
)

// ApplyResult is what an apply did.
type ApplyResult struct {
	Dir     string
	Partial bool
	// ExpectationsFailed is true when a case's result broke one of the plan's expectations.
	ExpectationsFailed bool
	// Verdicts are a check's answers (Config.Check), as its reports show them.
	Verdicts []check.Verdict
}

// Step is one part of a multi-step command (apply, calibrate), with the cleanup that undoes it (kind's
// create/actions style).
type Step struct {
	Name    string
	Do      func(ctx context.Context) error
	Cleanup func() error
}

// RunSteps runs steps in order until one fails (failed names it); undo undoes those that ran, in reverse order,
// whatever happened, logging a cleanup that fails.
func RunSteps(ctx context.Context, steps []Step, logger *slog.Logger) (undo func(), failed string, err error) {
	var done []Step
	undo = func() {
		for i := len(done) - 1; i >= 0; i-- {
			if done[i].Cleanup == nil {
				continue
			}
			if err := done[i].Cleanup(); err != nil {
				logger.Warn("cleanup", "step", done[i].Name, "err", err)
			}
		}
	}
	for _, s := range steps {
		logger.Debug("step", "name", s.Name)
		if err := s.Do(ctx); err != nil {
			return undo, s.Name, err
		}
		done = append(done, s)
	}
	return undo, "", nil
}

// Apply runs a plan on the lab: for every case and repeat, install the chart, load the Service, restart the
// Deployment as kubectl does during the load, record the Pods' lifecycle, then write the reports. Every step undoes
// itself, also when ctx ends (Ctrl-C): then what finished is reported and the run is marked partial. Its length is
// the list of setup steps, each with its cleanup; a case's run is caseRunner's.
func Apply(ctx context.Context, cfg ApplyConfig) (result ApplyResult, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Kind = KindApply
	if cfg.Connect == nil {
		cfg.Connect = ConnectLab(cfg.LabDir, cfg.Cowweb)
	}
	var (
		session          *Session
		target           Target
		createdNamespace bool
	)
	namespace := cfg.Plan.Namespace()
	steps := []Step{
		{Name: "start Prometheus and the results directory", Do: func(context.Context) error {
			var err error
			session, err = Start(cfg.Config)
			if err == nil {
				result.Dir = session.Dir
			}
			return err
		}, Cleanup: func() error { return session.Close() }},
		{Name: "connect to the target", Do: func(ctx context.Context) error {
			var err error
			if target, err = cfg.Connect(ctx, session.TargetInputs()); err == nil {
				session.SetTargetProvenance(target.Provenance())
			}
			return err
		}, Cleanup: func() error { return target.Close() }},
		{Name: "create the namespace", Do: func(ctx context.Context) error {
			var err error
			createdNamespace, err = EnsureNamespace(ctx, target.Client(), namespace)
			return err
		}, Cleanup: func() error {
			// What was installed goes before the target does, as it must on a cluster that stays.
			err := uninstallRelease(target, namespace, cfg.Logger)
			if createdNamespace && err == nil {
				err = target.Client().CoreV1().Namespaces().Delete(context.Background(), namespace, metav1.DeleteOptions{})
			}
			return err
		}},
	}
	// Undone in reverse order, whatever happens; the reports are written by then.
	undo, failed, err := RunSteps(ctx, steps, cfg.Logger)
	defer undo()
	if err != nil {
		return result, fmt.Errorf("%s: %w", failed, err)
	}

	runErr := (&caseRunner{cfg: cfg, session: session, target: target}).runAll(ctx)
	result.Partial = runErr != nil || ctx.Err() != nil
	if cfg.Progress != nil {
		cfg.Progress("", 0, PhaseReport, load.Progress{})
	}
	// The reports take a second or two: an interrupt now lets them finish, then marks them partial.
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	rep, err := session.Finish(finishCtx, result.Partial)
	if err == nil && !result.Partial && ctx.Err() != nil {
		result.Partial = true
		rep, err = session.Finish(finishCtx, true)
	}
	if err != nil {
		return result, errors.Join(runErr, err)
	}
	result.ExpectationsFailed, result.Verdicts = rep.Failed(), rep.Verdicts
	if ctx.Err() != nil {
		if runErr == nil {
			runErr = ctx.Err()
		}
		runErr = fmt.Errorf("interrupted: %w", runErr)
	}
	return result, runErr
}

// runAll runs every case and repeat a resume did not find finished, and stops at the first failure or interrupt.
func (r *caseRunner) runAll(ctx context.Context) error {
	for i, c := range r.cfg.Plan.Cases {
		if r.cfg.TuneCase != nil {
			var note string
			if c, note = r.cfg.TuneCase(c, r.session.Manifest.Runs); note != "" {
				r.cfg.Plan.Cases[i] = c
				r.cfg.Logger.Info("load chosen", "case", c.Name, "why", note)
			}
		}
		for run := 1; run <= r.cfg.Plan.Repeats && ctx.Err() == nil; run++ {
			if r.session.Finished(load.Labels{Plan: r.cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)}) {
				r.cfg.Logger.Info("finished before the resume: skipped", "case", c.Name, "run", run)
				continue
			}
			if err := r.run(ctx, c, run); err != nil {
				return err
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// EnsureNamespace creates the namespace when it is missing, enforcing the "restricted" Pod Security Standard, and
// says whether it did.
func EnsureNamespace(ctx context.Context, client kubernetes.Interface, name string) (created bool, err error) {
	namespaces := client.CoreV1().Namespaces()
	if _, err := namespaces.Get(ctx, name, metav1.GetOptions{}); err == nil || !apierrors.IsNotFound(err) {
		// There already, or not ours to look at (a Role in it may still let us work there).
		return false, nil
	}
	_, err = namespaces.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: restrictedNamespaceLabels}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

type caseRunner struct {
	cfg     ApplyConfig
	session *Session
	target  Target
}

// HelmConfiguration is the Helm SDK's configuration for a kubeconfig, its context (empty: the file's current
// one) and a namespace (release records in Secrets).
func HelmConfiguration(kubeconfig, kubeContext, namespace string, logger *slog.Logger) (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Context, flags.Namespace = &kubeconfig, &kubeContext, &namespace
	cfg := &action.Configuration{}
	return cfg, cfg.Init(flags, namespace, "secret", func(format string, args ...any) { logger.Debug(fmt.Sprintf(format, args...)) })
}

// inCluster runs the case's load from a Job of worker Pods and records the run from Prometheus' totals.
func (r *caseRunner) inCluster(ctx context.Context, c plan.Case, run int, url string, labels load.Labels, started chan<- struct{}) error {
	job, err := WorkerJob(r.cfg.Plan, c, run, url, r.session.Manifest.Provenance.Version)
	if err != nil {
		return err
	}
	query := func(ctx context.Context, q string) (map[string]float64, error) {
		vec, err := analysis.QueryVector(ctx, r.session.API, q, time.Now())
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, sample := range vec {
			out[string(sample.Metric["error"])] = float64(sample.Value)
		}
		return out, nil
	}
	if err := r.session.BeginRun(labels, c.App.TerminationGracePeriod.D()); err != nil {
		return err
	}
	summary, err := inClusterLoad(ctx, r.target.Client(), r.cfg.Plan.Namespace(), job, r.session.Prometheus(), query, labels, started)
	if err != nil {
		return err
	}
	return r.session.RecordRun(rundir.RunRecord{Labels: labels, Summary: summary, Drain: c.App.TerminationGracePeriod.D()})
}

// uninstallRelease removes the app's release, if there is one, and waits until its resources are gone.
func uninstallRelease(t Target, namespace string, logger *slog.Logger) error {
	helmCfg, err := t.Helm(namespace, logger)
	if err != nil {
		return err
	}
	return UninstallOwnRelease(helmCfg, namespace, logger)
}

// UninstallOwnRelease uninstalls the release only when the runner installed it.
func UninstallOwnRelease(helmCfg *action.Configuration, namespace string, logger *slog.Logger) error {
	last, err := helmCfg.Releases.Last(ReleaseName)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if last.Labels[InstalledByLabel] != InstalledByValue {
		return fmt.Errorf("namespace %s already has a Helm release %s that rollout-lab did not install (no %s=%s label): "+
			"it is left alone; remove it yourself or give the plan another namespace (target.namespace, -n)", namespace, ReleaseName, InstalledByLabel, InstalledByValue)
	}
	uninstall := action.NewUninstall(helmCfg)
	uninstall.Wait, uninstall.Timeout = true, 2*time.Minute
	if _, err := uninstall.Run(ReleaseName); err != nil {
		return fmt.Errorf("helm uninstall: %w", err)
	}
	logger.Info("uninstalled", "release", ReleaseName, "namespace", namespace)
	return nil
}

// replaceRelease replaces the release with the case's values, waits until every Pod is Ready, and says what it
// installed.
func (r *caseRunner) replaceRelease(ctx context.Context, c plan.Case) (*rundir.Installed, error) {
	if err := uninstallRelease(r.target, r.cfg.Plan.Namespace(), r.cfg.Logger); err != nil {
		return nil, err
	}
	helmCfg, err := r.target.Helm(r.cfg.Plan.Namespace(), r.cfg.Logger)
	if err != nil {
		return nil, err
	}
	values := charts.CowwebValues(c.App)
	rel, err := InstallCowweb(ctx, helmCfg, r.cfg.Plan.Namespace(), values)
	if err != nil {
		return nil, err
	}
	return InstalledFrom(rel.Manifest)
}

// InstallCowweb installs the cowweb chart (Helm SDK) as the runner's release in namespace, labelled as the runner's,
// and waits until every Pod is Ready: what apply does for each case, and what the bench times.
func InstallCowweb(ctx context.Context, helmCfg *action.Configuration, namespace string, values map[string]any) (*release.Release, error) {
	chart, err := charts.Cowweb()
	if err != nil {
		return nil, err
	}
	install := action.NewInstall(helmCfg)
	install.ReleaseName, install.Namespace = ReleaseName, namespace
	install.Labels = map[string]string{InstalledByLabel: InstalledByValue}
	install.Wait, install.Timeout = true, 5*time.Minute
	rel, err := install.RunWithContext(ctx, chart, values)
	if err != nil {
		return nil, fmt.Errorf("helm install: %w", err)
	}
	return rel, nil
}

// restart does what `kubectl rollout restart deployment/cowweb` does.
func (r *caseRunner) restart(ctx context.Context) error {
	return RestartDeployment(ctx, r.target.Client(), r.cfg.Plan.Namespace(), ReleaseName)
}

// waitRolledOut waits as `kubectl rollout status deployment/cowweb` does.
func (r *caseRunner) waitRolledOut(ctx context.Context, timeout time.Duration) error {
	return WaitRolledOut(ctx, r.target.Client(), r.cfg.Plan.Namespace(), ReleaseName, timeout)
}

// RestartDeployment does what `kubectl rollout restart deployment/NAME` does: patch the restartedAt annotation.
func RestartDeployment(ctx context.Context, client kubernetes.Interface, namespace, name string) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	_, err := client.AppsV1().Deployments(namespace).Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// WaitRolledOut decides a Deployment's rollout complete exactly as `kubectl rollout status` does, with kubectl's own
// status viewer.
func WaitRolledOut(ctx context.Context, client kubernetes.Interface, namespace, name string, timeout time.Duration) error {
	viewer := &polymorphichelpers.DeploymentStatusViewer{}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(d)
		if err != nil {
			return false, err
		}
		_, done, err := viewer.Status(&unstructured.Unstructured{Object: content}, 0)
		return done, err
	})
}

// timelineSettle is how long the timeline keeps recording after the load ends: Pods still terminating then (a
// preStop sleep, a graceful drain) belong to this case's timeline too, and the app's own log lines reach the
// recorder a little after the moment they record.
const timelineSettle = time.Second

// caseRun is one run of one case; its steps share this state.
type caseRun struct {
	*caseRunner
	c          plan.Case
	run        int
	labels     load.Labels
	log        *slog.Logger
	phase      atomic.Value // the current phase's name, for progress
	attributor *attribution.Attributor
	stopRecord func() []timeline.Event
	recorded   []timeline.Event
	stopLoad   context.CancelFunc
	attackDone chan error
	rolloutErr error
	attackErr  error
	failures   attribution.Failures
	installed  *rundir.Installed
}

// run runs one case once as a list of steps, each undone (when it has something to undo) in reverse order however
// the run ends: install, record, warm-up (the load starts), rollout, drain (the load ends), final scrape, results.
func (r *caseRunner) run(ctx context.Context, c plan.Case, run int) error {
	cr := &caseRun{caseRunner: r, c: c, run: run, labels: load.Labels{Plan: r.cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)},
		log: r.cfg.Logger.With("case", c.Name, "run", run)}
	cr.phase.Store(PhaseInstall)
	steps := []Step{
		{Name: PhaseInstall, Do: cr.install},
		{Name: "record the timeline", Do: cr.startRecording, Cleanup: cr.stopRecording},
		{Name: PhaseWarmUp, Do: cr.startLoad, Cleanup: func() error { cr.stopLoad(); return nil }},
		{Name: PhaseRollout, Do: cr.rollout},
		{Name: PhaseDrain, Do: cr.waitLoad},
		{Name: "final scrape", Do: cr.finalScrape},
		{Name: "write the run's results", Do: cr.writeResults},
	}
	undo, _, err := RunSteps(ctx, steps, cr.log)
	defer undo()
	if err != nil {
		return err
	}
	if cr.rolloutErr != nil {
		return fmt.Errorf("case %s run %d: rollout: %w", c.Name, run, cr.rolloutErr)
	}
	return cr.attackErr
}

func (cr *caseRun) enter(phase string) {
	cr.phase.Store(phase)
	if cr.cfg.Progress != nil {
		cr.cfg.Progress(cr.c.Name, cr.run, phase, load.Progress{})
	}
	cr.log.Info(phase)
}

// install installs the case's release and waits until the Service sends new connections to every replica.
func (cr *caseRun) install(ctx context.Context) error {
	cr.enter(PhaseInstall)
	var err error
	if cr.installed, err = cr.caseRunner.replaceRelease(ctx, cr.c); err != nil {
		return err
	}
	servingCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return cr.target.WaitServing(servingCtx, cr.cfg.Plan.Namespace(), ReleaseName, servicePort, cr.c.App.Replicas, cr.c)
}

// startRecording starts the timeline; each event also reaches the attributor as it is recorded.
func (cr *caseRun) startRecording(ctx context.Context) error {
	cr.attributor = attribution.NewAttributor(attribution.SettleTime, attribution.FailureSampleLimit)
	var err error
	cr.stopRecord, err = cr.target.Record(ctx, cr.cfg.Plan.Namespace(), cr.attributor.Event)
	return err
}

// stopRecording ends the timeline once (the results step stops it first, to write it).
func (cr *caseRun) stopRecording() error {
	if cr.stopRecord != nil {
		cr.recorded, cr.stopRecord = cr.stopRecord(), nil
	}
	return nil
}

// startLoad starts the case's load and returns once it is sending (or failed to start).
func (cr *caseRun) startLoad(ctx context.Context) error {
	namespace := cr.cfg.Plan.Namespace()
	path := cr.target.LoadPath(cr.c, namespace, ReleaseName, servicePort)
	url, dial := path.URL, path.Dial
	// The report states the way the load went (a load balancer, a node's proxy).
	cr.session.SetLoadPath(path.Description, path.DescriptionJa)
	var loadCtx context.Context
	loadCtx, cr.stopLoad = context.WithCancel(ctx)
	cr.attackDone = make(chan error, 1)
	started := make(chan struct{})
	cr.enter(PhaseWarmUp)
	go func() {
		if cr.c.Load.InCluster.Pods > 0 {
			cr.attackDone <- cr.inCluster(loadCtx, cr.c, cr.run, url, cr.labels, started)
			return
		}
		close(started)
		_, err := cr.session.Attack(loadCtx, cr.c, cr.run, url, dial, func(p load.Progress) {
			if cr.cfg.Progress != nil {
				cr.cfg.Progress(cr.c.Name, cr.run, cr.phase.Load().(string), p)
			}
		}, cr.attributor.Outcome)
		cr.attackDone <- err
	}()
	select {
	case <-started:
	case err := <-cr.attackDone:
		cr.attackDone <- err // the drain step reports it
	case <-ctx.Done():
	}
	return nil
}

// rollout does what `kubectl rollout restart` does at rollout.at and waits as `kubectl rollout status` does. A
// rollout that fails or times out does not stop the run: the load ends and the results are written first.
func (cr *caseRun) rollout(ctx context.Context) error {
	if !cr.c.Rollout.Restart {
		return nil
	}
	select {
	case <-time.After(cr.c.RolloutAt()):
	case err := <-cr.attackDone:
		cr.attackDone <- err
		return nil
	case <-ctx.Done():
		return nil
	}
	cr.enter(PhaseRollout)
	cr.session.Metrics.MarkPhase(cr.labels, load.PhaseRolloutStart, time.Now())
	if cr.rolloutErr = cr.restart(ctx); cr.rolloutErr != nil {
		return nil
	}
	if cr.rolloutErr = cr.waitRolledOut(ctx, cr.c.Rollout.Timeout.D()); cr.rolloutErr != nil {
		return nil
	}
	cr.session.Metrics.MarkPhase(cr.labels, load.PhaseRolloutComplete, time.Now())
	cr.enter(PhaseDrain)
	return nil
}

// waitLoad waits for the load to end, then lets the timeline settle. A load that failed still has its results
// written; the run then ends with its error.
func (cr *caseRun) waitLoad(context.Context) error {
	cr.attackErr = <-cr.attackDone
	time.Sleep(timelineSettle)
	return nil
}

// finalScrape records the attribution in the run's record and waits until Prometheus holds every sample.
func (cr *caseRun) finalScrape(ctx context.Context) error {
	if err := cr.stopRecording(); err != nil {
		return err
	}
	attributed := cr.attributor.Finish()
	byCause := attributed.ByClass.ByCause()
	for _, cause := range attribution.Causes {
		cr.session.Attributed.WithLabelValues(cr.labels.Plan, cr.labels.Case, cr.labels.Run, cause).Add(float64(byCause[cause]))
	}
	if err := cr.session.CompleteRun(cr.labels, RunDetails{Attribution: byCause, AttributionByClass: attributed.ByClass,
		InFlight: attributed.InFlight, Installed: cr.installed}); err != nil {
		return err
	}
	attribution.AnnotateInFlight(cr.recorded, attributed.InFlight)
	cr.failures = attributed.Failures
	return cr.session.FinalScrape(context.WithoutCancel(ctx), time.Now())
}

// writeResults writes the run's timeline (events.json) and its failed requests (failures.json).
func (cr *caseRun) writeResults(context.Context) error {
	dir := rundir.RunDir(cr.session.Dir, cr.c.Name, strconv.Itoa(cr.run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Events the app logged carry the app's own time and may reach the recorder a little late.
	sort.SliceStable(cr.recorded, func(i, j int) bool { return cr.recorded[i].Time.Before(cr.recorded[j].Time) })
	data, err := json.MarshalIndent(cr.recorded, "", "  ")
	if err != nil {
		return err
	}
	if err := rundir.WriteFileAtomic(filepath.Join(dir, rundir.EventsFile), data, 0o644); err != nil {
		return err
	}
	if data, err = json.MarshalIndent(cr.failures, "", "  "); err != nil {
		return err
	}
	return rundir.WriteFileAtomic(filepath.Join(dir, rundir.FailuresFile), data, 0o644)
}
