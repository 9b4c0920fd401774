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
	"sync/atomic"
	"time"

	"helm.sh/helm/v3/pkg/action"
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
	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
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
}

// step is one part of apply, with the cleanup that undoes it (kind's create/actions style).
type step struct {
	name    string
	do      func(ctx context.Context) error
	cleanup func() error
}

// Apply runs a plan on the lab: for every case and repeat, install the chart, load the Service, restart the
// Deployment as kubectl does during the load, record the Pods' lifecycle, then write the reports. Every step undoes
// itself, also when ctx ends (Ctrl-C): then what finished is reported and the run is marked partial.
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
	steps := []step{
		{name: "start Prometheus and the results directory", do: func(context.Context) error {
			var err error
			session, err = Start(cfg.Config)
			if err == nil {
				result.Dir = session.Dir
			}
			return err
		}, cleanup: func() error { return session.Close() }},
		{name: "connect to the target", do: func(ctx context.Context) error {
			var err error
			if target, err = cfg.Connect(ctx, session); err == nil {
				session.Manifest.Provenance.Target = target.Provenance()
			}
			return err
		}, cleanup: func() error { return target.Close() }},
		{name: "create the namespace", do: func(ctx context.Context) error {
			var err error
			createdNamespace, err = ensureNamespace(ctx, target.Client(), namespace)
			return err
		}, cleanup: func() error {
			// What was installed goes before the target does, as it must on a cluster that stays.
			err := uninstallRelease(target, namespace, cfg.Logger)
			if createdNamespace && err == nil {
				err = target.Client().CoreV1().Namespaces().Delete(context.Background(), namespace, metav1.DeleteOptions{})
			}
			return err
		}},
	}
	var done []step
	defer func() {
		// Undo in reverse order, whatever happened; the reports were written by then.
		for i := len(done) - 1; i >= 0; i-- {
			if done[i].cleanup == nil {
				continue
			}
			if cerr := done[i].cleanup(); cerr != nil {
				cfg.Logger.Warn("cleanup", "step", done[i].name, "err", cerr)
			}
		}
	}()
	for _, s := range steps {
		cfg.Logger.Debug("apply", "step", s.name)
		if err := s.do(ctx); err != nil {
			return result, fmt.Errorf("%s: %w", s.name, err)
		}
		done = append(done, s)
	}

	runner := &caseRunner{cfg: cfg, session: session, target: target}
	var runErr error
	for _, c := range cfg.Plan.Cases {
		for run := 1; run <= cfg.Plan.Repeats && ctx.Err() == nil; run++ {
			if session.Finished(load.Labels{Plan: cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)}) {
				cfg.Logger.Info("finished before the resume: skipped", "case", c.Name, "run", run)
				continue
			}
			if runErr = runner.run(ctx, c, run); runErr != nil {
				break
			}
		}
		if runErr != nil || ctx.Err() != nil {
			break
		}
	}
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
	result.ExpectationsFailed = rep.Failed()
	if ctx.Err() != nil {
		if runErr == nil {
			runErr = ctx.Err()
		}
		runErr = fmt.Errorf("interrupted: %w", runErr)
	}
	return result, runErr
}

// ensureNamespace creates the namespace when it is missing, enforcing the "restricted" Pod Security Standard, and
// says whether it did.
func ensureNamespace(ctx context.Context, client kubernetes.Interface, name string) (created bool, err error) {
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
	return uninstallOwnRelease(helmCfg, namespace, logger)
}

// uninstallOwnRelease uninstalls the release only when the runner installed it.
func uninstallOwnRelease(helmCfg *action.Configuration, namespace string, logger *slog.Logger) error {
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

// install replaces the release with the case's values and waits until every Pod is Ready.
func (r *caseRunner) install(ctx context.Context, c plan.Case) error {
	if err := uninstallRelease(r.target, r.cfg.Plan.Namespace(), r.cfg.Logger); err != nil {
		return err
	}
	helmCfg, err := r.target.Helm(r.cfg.Plan.Namespace(), r.cfg.Logger)
	if err != nil {
		return err
	}
	values := charts.CowwebValues(c.App)
	r.target.AdjustValues(values)
	return InstallCowweb(ctx, helmCfg, r.cfg.Plan.Namespace(), values)
}

// InstallCowweb installs the cowweb chart (Helm SDK) as the runner's release in namespace, labelled as the runner's,
// and waits until every Pod is Ready: what apply does for each case, and what the bench times.
func InstallCowweb(ctx context.Context, helmCfg *action.Configuration, namespace string, values map[string]any) error {
	chart, err := charts.Cowweb()
	if err != nil {
		return err
	}
	install := action.NewInstall(helmCfg)
	install.ReleaseName, install.Namespace = ReleaseName, namespace
	install.Labels = map[string]string{InstalledByLabel: InstalledByValue}
	install.Wait, install.Timeout = true, 5*time.Minute
	if _, err := install.RunWithContext(ctx, chart, values); err != nil {
		return fmt.Errorf("helm install: %w", err)
	}
	return nil
}

// restart does what `kubectl rollout restart deployment/cowweb` does: patch the restartedAt annotation.
func (r *caseRunner) restart(ctx context.Context) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	_, err := r.target.Client().AppsV1().Deployments(r.cfg.Plan.Namespace()).Patch(ctx, ReleaseName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// waitRolledOut decides completion exactly as `kubectl rollout status` does, with kubectl's own status viewer.
func (r *caseRunner) waitRolledOut(ctx context.Context, timeout time.Duration) error {
	viewer := &polymorphichelpers.DeploymentStatusViewer{}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := r.target.Client().AppsV1().Deployments(r.cfg.Plan.Namespace()).Get(ctx, ReleaseName, metav1.GetOptions{})
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

func (r *caseRunner) run(ctx context.Context, c plan.Case, run int) error {
	log := r.cfg.Logger.With("case", c.Name, "run", run)
	var currentPhase atomic.Value
	phase := func(p string) {
		currentPhase.Store(p)
		if r.cfg.Progress != nil {
			r.cfg.Progress(c.Name, run, p, load.Progress{})
		}
		log.Info(p)
	}
	phase(PhaseInstall)
	if err := r.install(ctx, c); err != nil {
		return err
	}
	namespace := r.cfg.Plan.Namespace()
	servingCtx, cancelServing := context.WithTimeout(ctx, time.Minute)
	err := r.target.WaitServing(servingCtx, namespace, ReleaseName, servicePort, c.App.Replicas, c)
	cancelServing()
	if err != nil {
		return err
	}
	attributor := analysis.NewAttributor(analysis.SettleTime, analysis.FailureSampleLimit)
	stopRecording, err := r.target.Record(ctx, namespace, attributor.Event)
	if err != nil {
		return err
	}
	labels := load.Labels{Plan: r.cfg.Plan.Name, Case: c.Name, Run: fmt.Sprint(run)}
	url, dial := r.target.LoadURL(c, namespace, ReleaseName, servicePort)
	// The target now knows the load's path (a load balancer, a node's proxy): the report states it.
	r.session.Manifest.Provenance.Target = r.target.Provenance()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	attackDone := make(chan error, 1)
	loadStarted := make(chan struct{})
	phase(PhaseWarmUp)
	go func() {
		if c.Load.InCluster.Pods > 0 {
			attackDone <- r.inCluster(loadCtx, c, run, url, labels, loadStarted)
			return
		}
		close(loadStarted)
		_, err := r.session.Attack(loadCtx, c, run, url, dial, func(p load.Progress) {
			if r.cfg.Progress != nil {
				r.cfg.Progress(c.Name, run, currentPhase.Load().(string), p)
			}
		}, attributor.Outcome)
		attackDone <- err
	}()
	var rolloutErr error
	started := false
	select {
	case <-loadStarted:
		started = true
	case err := <-attackDone:
		attackDone <- err
	case <-ctx.Done():
	}
	if c.Rollout.Restart && started {
		select {
		case <-time.After(c.RolloutAt()):
			phase(PhaseRollout)
			r.session.Metrics.MarkPhase(labels, load.PhaseRolloutStart, time.Now())
			if rolloutErr = r.restart(ctx); rolloutErr == nil {
				if rolloutErr = r.waitRolledOut(ctx, c.Rollout.Timeout.D()); rolloutErr == nil {
					r.session.Metrics.MarkPhase(labels, load.PhaseRolloutComplete, time.Now())
					phase(PhaseDrain)
				}
			}
		case err := <-attackDone:
			attackDone <- err
		case <-ctx.Done():
		}
	}
	attackErr := <-attackDone
	// Pods still terminating after the load belong to this case's timeline too.
	time.Sleep(time.Second)
	recorded := stopRecording()
	attributed := attributor.Finish()
	byClass, failures := attributed.ByClass, attributed.Failures
	attribution := byClass.ByPhase()
	for _, phase := range analysis.AttributionPhases {
		r.session.Attributed.WithLabelValues(labels.Plan, labels.Case, labels.Run, phase).Add(float64(attribution[phase]))
	}
	if n := len(r.session.Manifest.Runs); n > 0 && r.session.Manifest.Runs[n-1].Labels == labels {
		r.session.Manifest.Runs[n-1].Attribution = attribution
		r.session.Manifest.Runs[n-1].AttributionByClass = byClass
		r.session.Manifest.Runs[n-1].InFlight = attributed.InFlight
		if err := r.session.Manifest.Save(r.session.Dir); err != nil {
			return err
		}
	}
	if err := r.session.FinalScrape(context.WithoutCancel(ctx), time.Now()); err != nil {
		return err
	}
	eventsFile := filepath.Join(r.session.Dir, "cases", c.Name, fmt.Sprintf("run-%d", run), "events.json")
	if err := os.MkdirAll(filepath.Dir(eventsFile), 0o755); err != nil {
		return err
	}
	// Events the app logged carry the app's own time and may reach the recorder a little late.
	sort.SliceStable(recorded, func(i, j int) bool { return recorded[i].Time.Before(recorded[j].Time) })
	analysis.AnnotateInFlight(recorded, attributed.InFlight)
	data, err := json.MarshalIndent(recorded, "", "  ")
	if err != nil {
		return err
	}
	if err := rundir.WriteFileAtomic(eventsFile, data, 0o644); err != nil {
		return err
	}
	if data, err = json.MarshalIndent(failures, "", "  "); err != nil {
		return err
	}
	if err := rundir.WriteFileAtomic(filepath.Join(filepath.Dir(eventsFile), "failures.json"), data, 0o644); err != nil {
		return err
	}
	if rolloutErr != nil {
		return fmt.Errorf("case %s run %d: rollout: %w", c.Name, run, rolloutErr)
	}
	return attackErr
}
